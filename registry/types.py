"""Plain result types of the SDK (never live ORM objects). ``to_dict()`` gives JSON-ready data."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True)
class BaseModelInfo(_Serializable):
    id: int
    name: str
    revision: str | None
    local_path: str | None
    architecture: str | None
    model_type: str | None
    config_hash: str | None
    vocab_size: int | None
    module_count: int
    adapter_versions: int = 0


@dataclasses.dataclass(frozen=True)
class ParentLink(_Serializable):
    ref: str
    relation: str
    weight: float | None
    position: int
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class CompatInfo(_Serializable):
    base_model: str
    revision: str | None
    level: str
    evidence: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class AdapterVersion(_Serializable):
    """One registered version of an adapter, with what a person wants to see at a glance."""

    id: int
    name: str
    version: int
    ref: str
    status: str
    base_model: str | None
    base_revision: str | None
    peft_type: str
    task_type: str | None
    r: int
    lora_alpha: float
    use_rslora: bool
    use_dora: bool
    target_modules: list[str]
    modules_to_save: list[str]
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    fan_in_fan_out: bool
    peft_version: str | None
    weights_sha256: str
    size_bytes: int
    param_count: int
    dtypes: list[str]
    module_count: int
    path: str
    source_uri: str | None
    description: str | None
    created_at: datetime
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    aliases: list[str] = dataclasses.field(default_factory=list)
    parents: list[ParentLink] = dataclasses.field(default_factory=list)
    compatible: list[CompatInfo] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class AliasInfo(_Serializable):
    """``name@alias`` and the exact version it points at."""

    name: str
    alias: str
    ref: str
    updated_at: datetime


@dataclasses.dataclass(frozen=True)
class LineageNode(_Serializable):
    id: int
    ref: str
    weights_sha256: str
    created_at: datetime


@dataclasses.dataclass(frozen=True)
class LineageEdgeInfo(_Serializable):
    child: str
    parent: str
    relation: str
    weight: float | None
    position: int
    params: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LineageGraph(_Serializable):
    """Every ancestor and descendant of ``root``, with the edges between them."""

    root: str
    nodes: list[LineageNode]
    edges: list[LineageEdgeInfo]


@dataclasses.dataclass(frozen=True)
class SearchPage(_Serializable):
    items: list[AdapterVersion]
    total: int
    limit: int
    offset: int
