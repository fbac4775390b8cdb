"""Recipes: a YAML list of steps (train, merge, validate with gates, promote, publish), validated with pydantic.

A step refers to an earlier step's output as ``@step-name``; any other reference is a catalog reference
(``name``, ``name:3``, ``name@alias``) resolved to an exact version when the run starts. Export the JSON
schema with ``adreg recipe schema``.

```yaml
name: weekly-tone-legal
steps:
  - name: retrain
    train: {source: support-tone@production, data: ./week.jsonl, steps: 300, lr: 1.0e-4}
  - name: merged
    merge: {sources: ["@retrain", legal@production], weights: [0.7, 0.3], method: svd, name: tone-legal}
  - name: check
    validate: {target: "@merged", gates: {max_distance_from: {"@retrain": 5.0}}}
  - name: stage
    promote: {target: "@merged", alias: staging}
  - name: ship
    publish: {target: "@merged", repo: acme/tone-legal}
```

Limits (docs/recipes.md): a recipe file is at most ``MAX_RECIPE_BYTES`` (512 KiB) of UTF-8 YAML (or JSON), nested at
most ``MAX_DEPTH`` (32) collections deep, with at most ``MAX_STEPS`` (1000) steps; YAML anchors and aliases
(``&x``, ``*x``, ``<<: *x``) are refused, so nothing expands. Values are plain JSON: strings, finite numbers
(integers within 64 bits), booleans, null, lists and string-keyed mappings. Every check is linear in the
recipe's size and every refusal is an :class:`InvalidRecipe`.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from registry.errors import InvalidName, InvalidReference, RegistryError, field_problems
from registry.refs import check_hub_repo, check_revision, check_slug

MAX_RECIPE_BYTES = 512 << 10  # a recipe of 1000 steps with parameters is ~200 KB of YAML
MAX_DEPTH = 32  # nesting of mappings and lists (a recipe's own structure is 6 deep)
MAX_STEPS = 1000
_MAX_INT = 2**63 - 1


class InvalidRecipe(RegistryError):
    """A recipe cannot run; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the recipe is not valid:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _slug(value: str | None, what: str) -> str | None:
    """check_slug as a pydantic validator (a ValueError, so every problem is listed together)."""
    if value is None:
        return None
    try:
        return check_slug(value, what)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None


class TrainGates(_Strict):
    max_eval_loss: float | None = None


class TrainStep(_Strict):
    source: str | None = None
    joint_with: list[str] = Field(default_factory=list)
    new: dict[str, Any] | None = None
    base: str | None = None
    data: str
    steps: int = Field(default=100, gt=0)
    lr: float = Field(default=1e-4, gt=0)
    batch_size: int = Field(default=4, gt=0)
    seed: int = 0
    name: str | None = None
    gates: TrainGates = Field(default_factory=TrainGates)

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str | None) -> str | None:
        return _slug(value, "adapter name")


class MergeStep(_Strict):
    sources: list[str] = Field(min_length=1)
    weights: list[float]
    method: str = "svd"
    params: dict[str, Any] = Field(default_factory=dict)
    name: str
    allow_cross_base: bool = False

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str | None) -> str | None:
        return _slug(value, "adapter name")


class ValidateGates(_Strict):
    max_distance_from: dict[str, float] = Field(default_factory=dict)  # parent ref or @step -> max |logit diff|
    require_exact: bool = False
    min_retention: float | None = None  # every parent's retention (measured on its held-out data) at least this


class ValidateStep(_Strict):
    target: str
    gates: ValidateGates = Field(default_factory=ValidateGates)


class PromoteStep(_Strict):
    target: str
    alias: str

    @field_validator("alias")
    @classmethod
    def _alias_is_slug(cls, value: str | None) -> str | None:
        return _slug(value, "alias")


class PublishStep(_Strict):
    target: str
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    branch: str = "main"
    private: bool = False

    @field_validator("branch")
    @classmethod
    def _hub_branch(cls, value: str) -> str:
        try:
            return check_revision(value, "branch")
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None

    @field_validator("repo")
    @classmethod
    def _hub_repo(cls, value: str) -> str:
        try:
            return check_hub_repo(value)
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None


KINDS = ("train", "merge", "validate", "promote", "publish")


class Step(_Strict):
    name: str
    train: TrainStep | None = None
    merge: MergeStep | None = None
    validate_: ValidateStep | None = Field(default=None, alias="validate")
    promote: PromoteStep | None = None
    publish: PublishStep | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        _slug(self.name, "step name")
        if sum(self.body_or_none(k) is not None for k in KINDS) != 1:
            raise ValueError(f"step {self.name!r} must have exactly one of {', '.join(KINDS)}")
        return self

    def body_or_none(self, kind: str) -> Any:
        return self.validate_ if kind == "validate" else getattr(self, kind)

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if self.body_or_none(k) is not None)

    @property
    def body(self) -> Any:
        return self.body_or_none(self.kind)


class Recipe(_Strict):
    name: str
    steps: list[Step] = Field(min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _names(self) -> Recipe:
        _slug(self.name, "recipe name")
        dupes = sorted(n for n, count in Counter(s.name for s in self.steps).items() if count > 1)
        if dupes:
            raise ValueError(f"step names must be unique (repeated: {', '.join(dupes)})")
        return self

    def references(self, step: Step) -> list[str]:
        """Every adapter reference a step reads (``@step`` or catalog references)."""
        body = step.body
        if step.kind == "train":
            return [r for r in [body.source, *body.joint_with] if r]
        if step.kind == "merge":
            return list(body.sources)
        refs = [body.target]
        if step.kind == "validate":
            refs += list(body.gates.max_distance_from)
        return refs


def _parse_yaml(text: str, label: str) -> Any:
    """YAML to Python with aliases/anchors refused and nesting bounded, checked on the event stream (linear, no
    recursion) before anything is built; libyaml when available."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    depth = 0
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.AliasEvent):
            raise InvalidRecipe([f"{label}: YAML aliases (*{event.anchor}) are not allowed in a recipe; "
                                 "write the value out"])
        if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)) and event.anchor is not None:
            raise InvalidRecipe([f"{label}: YAML anchors (&{event.anchor}) are not allowed in a recipe; "
                                 "write the value out"])
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise InvalidRecipe([f"{label}: nested more than {MAX_DEPTH} levels deep"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return yaml.load(text, Loader=loader)


def _unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no database or file can hold it
        return False
    return True


def _plain_problem(data: Any) -> str | None:
    """The first value that is not plain JSON (or nests too deep), as ``field.path: reason`` (pydantic's way of
    naming fields); iterative and linear."""
    stack: list[tuple[Any, str, int]] = [(data, "recipe", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                return f"{path}: nested more than {MAX_DEPTH} levels deep"
            prefix = "" if depth == 0 else f"{path}."
            if isinstance(value, dict):
                for key, item in value.items():
                    if not isinstance(key, str) or not _unicode(key):
                        return f"{path}: keys must be strings of valid Unicode (got {type(key).__name__} {key!r:.40})"
                    stack.append((item, f"{prefix}{key}", depth + 1))
            else:
                stack.extend((item, f"{prefix}{i}", depth + 1) for i, item in enumerate(value))
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int):
            if abs(value) > _MAX_INT:
                return f"{path}: integer out of range (at most 64 bits)"
        elif isinstance(value, float):
            if not math.isfinite(value):
                return f"{path}: {value} is not a finite number"
        elif isinstance(value, str):
            if not _unicode(value):
                return f"{path}: not valid Unicode (a lone surrogate)"
        else:
            return (f"{path}: a {type(value).__name__} is not allowed (recipes hold strings, numbers, booleans, "
                    "lists and mappings; quote dates and other special values)")
    return None


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """Parse a recipe (a YAML file path or a dict), raising :class:`InvalidRecipe` with every problem.

    Bounded (``MAX_RECIPE_BYTES``, ``MAX_DEPTH``, ``MAX_STEPS``), with YAML anchors and aliases refused.
    """
    if isinstance(source, dict):
        data: Any = source
    else:
        path = Path(source)
        try:
            if not path.is_file():
                raise InvalidRecipe([f"recipe file {path} does not exist"])
            with path.open("rb") as fh:
                raw = fh.read(MAX_RECIPE_BYTES + 1)
        except OSError as exc:
            raise InvalidRecipe([f"cannot read recipe file {path}: {exc.strerror or exc}"]) from None
        if len(raw) > MAX_RECIPE_BYTES:
            raise InvalidRecipe([f"{path} is larger than {MAX_RECIPE_BYTES // 1024} KiB (the recipe size limit)"])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRecipe([f"{path} is not UTF-8 text (byte {exc.start})"]) from None
        try:
            data = _parse_yaml(text, str(path))
        except yaml.YAMLError as exc:
            raise InvalidRecipe([f"{path} is not valid YAML: {exc}"]) from None
        except RecursionError:
            raise InvalidRecipe([f"{path}: nested more than {MAX_DEPTH} levels deep"]) from None
    if not isinstance(data, dict):
        raise InvalidRecipe(["a recipe is a mapping with 'name' and 'steps'"])
    steps = data.get("steps")
    if isinstance(steps, list) and len(steps) > MAX_STEPS:
        raise InvalidRecipe([f"steps: {len(steps)} steps, at most {MAX_STEPS} are allowed"])
    problem = _plain_problem(data)
    if problem:
        raise InvalidRecipe([problem])
    if isinstance(source, dict) and len(json.dumps(data)) > MAX_RECIPE_BYTES:
        raise InvalidRecipe([f"the recipe is larger than {MAX_RECIPE_BYTES // 1024} KiB (the recipe size limit)"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise InvalidRecipe(field_problems(exc, "recipe")) from None
    problems = []
    seen: set[str] = set()
    for step in recipe.steps:
        for ref in recipe.references(step):
            if ref.startswith("@") and ref[1:] not in seen:
                problems.append(f"step {step.name}: {ref} is not an earlier step")
        seen.add(step.name)
    if problems:
        raise InvalidRecipe(problems)
    return recipe


def json_schema() -> dict[str, Any]:
    return Recipe.model_json_schema(by_alias=True)
