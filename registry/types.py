"""Plain result types of the SDK (never live ORM objects). ``to_dict()`` gives JSON-ready data."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any


class _Serializable:
    def to_dict(self) -> dict[str, Any]:
        return jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]


def jsonable(value: Any) -> Any:
    """Datetimes as ISO strings, inside dicts and lists (the dataclasses' ``to_dict`` helper)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def to_jsonable(data: Any) -> Any:
    """Any SDK result (dataclass, pydantic model, list or dict of them) as plain JSON data."""
    if hasattr(data, "to_dict"):
        return data.to_dict()
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return to_jsonable(dataclasses.asdict(data))
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    if isinstance(data, (list, tuple)):
        return [to_jsonable(x) for x in data]
    if isinstance(data, dict):
        return {k: to_jsonable(v) for k, v in data.items()}
    return jsonable(data)


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
    short_name: str | None = None


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
class MetricInfo(_Serializable):
    """One named number about a version, on ``dataset`` ('' for none), logged by a user or a job."""

    name: str
    value: float
    dataset: str = ""
    source: str = "user"
    job_id: int | None = None
    recorded_at: datetime | None = None
    recorded_by: str | None = None


@dataclasses.dataclass(frozen=True)
class DatasetInfo(_Serializable):
    """One version of a catalog dataset: a data file pinned by its sha256 (``adreg data show``)."""

    name: str
    version: int
    ref: str  # name:version
    sha256: str
    format: str  # json, text, parquet or csv (how ``datasets`` reads it)
    rows: int
    columns: list[str]
    task_type: str | None  # the task its columns were checked for (None: not checked for one)
    size_bytes: int
    path: str  # the stored file
    source_uri: str | None
    created_at: datetime
    created_by: str | None = None
    versions: list[str] = dataclasses.field(default_factory=list)  # every version of this dataset name (show)
    linked: list[dict[str, str]] = dataclasses.field(default_factory=list)  # versions using it: {ref, role} (show)


@dataclasses.dataclass(frozen=True)
class DatasetLink(_Serializable):
    """A dataset linked to an adapter version, with its role: ``train``, ``heldout`` or ``eval``."""

    ref: str  # the dataset's name:version
    role: str
    sha256: str
    rows: int


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
    created_by: str | None = None
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    aliases: list[str] = dataclasses.field(default_factory=list)
    parents: list[ParentLink] = dataclasses.field(default_factory=list)
    compatible: list[CompatInfo] = dataclasses.field(default_factory=list)
    status_reason: str | None = None  # why it was deprecated or deleted
    adapter_description: str | None = None  # the adapter's own description (``description`` is the version's)
    metrics: list[MetricInfo] = dataclasses.field(default_factory=list)
    datasets: list[DatasetLink] = dataclasses.field(default_factory=list)  # train / heldout / eval sets


@dataclasses.dataclass(frozen=True)
class AliasInfo(_Serializable):
    """``name@alias`` and the exact version it points at."""

    name: str
    alias: str
    ref: str
    updated_at: datetime
    protected: bool = False


@dataclasses.dataclass(frozen=True)
class LineageNode(_Serializable):
    id: int
    ref: str
    weights_sha256: str
    created_at: datetime
    status: str = "ready"  # ready, deprecated or deleted (a tombstone kept for the graph)


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


# -- lifecycle (issue 15) --
# -- end lifecycle --

# -- metrics (issue 15) --
# -- end metrics --

# -- diff (issue 15) --
@dataclasses.dataclass(frozen=True)
class ConfigChange(_Serializable):
    """One setting that differs between two versions: A's value (``old``) and B's (``new``); None: absent."""

    key: str
    old: Any
    new: Any


@dataclasses.dataclass(frozen=True)
class ModuleRankChange(_Serializable):
    """A module in both versions whose rank, alpha or scaling (rank_pattern, alpha_pattern, rsLoRA) differs."""

    module: str
    rank_a: int
    rank_b: int
    alpha_a: float
    alpha_b: float
    scaling_a: float
    scaling_b: float


@dataclasses.dataclass(frozen=True)
class ModuleDistance(_Serializable):
    """How far module ``module``'s delta ``dA = s B A`` of version A is from version B's ``dB``.

    ``distance`` is ``||dA - dB||_F / ||dB||_F``, None when ``||dB||_F`` is 0 (then read ``abs_distance``,
    ``||dA - dB||_F``). ``method`` says how it was computed from the thin factors: ``identical`` (same factors and
    scaling), ``same_lora_A`` / ``same_lora_B`` (one factor, scaled, is the same: the difference is exact),
    ``gram`` (Gram matrices) or ``qr`` (nearly equal deltas: QR factors, free of the Gram expansion's cancellation).
    """

    module: str
    kind: str  # linear, embedding or conv
    distance: float | None
    abs_distance: float
    norm_a: float
    norm_b: float
    rank_a: int
    rank_b: int
    method: str


@dataclasses.dataclass(frozen=True)
class TensorDistance(_Serializable):
    """A tensor other than the LoRA factors, compared value by value: ``magnitude`` (DoRA), ``bias`` (lora_B's bias,
    times the module's scaling), ``saved`` (a modules_to_save copy) or ``other`` (e.g. trainable-token deltas)."""

    key: str  # the tensor's name, without PEFT's ``base_model.model.`` prefix
    kind: str
    distance: float | None  # ||a - b|| / ||b||; None when ||b|| is 0
    abs_distance: float
    norm_a: float
    norm_b: float


@dataclasses.dataclass(frozen=True)
class NotCompared(_Serializable):
    """A module or tensor both versions have that could not be compared, and why (e.g. different shapes)."""

    name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class VersionDiff(_Serializable):
    """What differs from version ``a`` to version ``b`` (``Registry.diff(a, b)``, ``adreg diff A B``).

    *Added* means in B only, *removed* in A only. ``modules`` holds every module both have, most different first
    (modules whose ``||dB||`` is 0 but ``dA`` is not come first, identical ones last). ``overall_distance`` is
    ``||dA - dB|| / ||dB||`` over all those modules together (None when every ``dB`` is 0).
    """

    a: str
    b: str
    same_weights: bool  # the same weights file (sha256)
    base_changes: list[ConfigChange]  # base_model / base_revision: the catalog's resolved base identity
    config_changes: list[ConfigChange]  # every adapter_config.json key that differs (see docs/catalog.md)
    rank_changes: list[ConfigChange]  # r, lora_alpha, use_rslora, use_dora
    module_ranks: list[ModuleRankChange]
    modules_added: list[str]
    modules_removed: list[str]
    target_modules_added: list[str]  # leaf names (q_proj, ...) of the modules each version's weights hold
    target_modules_removed: list[str]
    modules: list[ModuleDistance]
    overall_distance: float | None
    overall_abs_distance: float
    tensors: list[TensorDistance]
    tensors_added: list[str]
    tensors_removed: list[str]
    not_compared: list[NotCompared]
    notes: list[str]
    seconds: float
# -- end diff --

# -- named bases (issue 15) --
@dataclasses.dataclass(frozen=True)
class CompatibleVersion(_Serializable):
    """A version with evidence that it fits a base: its levels (``exact``, ``shape``, ``validated``) and the base
    it was registered against."""

    ref: str
    levels: list[str]
    registered_base: str | None
    status: str


@dataclasses.dataclass(frozen=True)
class BaseModelDetail(_Serializable):
    """One base model as ``adreg base show`` prints it: its record, every adaptable module's shape, how many
    versions were registered against it, how many fit it by level of evidence, and those versions (newest first,
    at most the ``limit`` asked for). Deleted versions are not counted."""

    info: BaseModelInfo
    module_shapes: dict[str, dict[str, Any]]
    versions: int
    compatible_by_level: dict[str, int]
    compatible_total: int
    compatible: list[CompatibleVersion] = dataclasses.field(default_factory=list)
# -- end named bases --
