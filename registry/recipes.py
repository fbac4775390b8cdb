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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from registry.errors import RegistryError, field_problems
from registry.refs import check_slug


class InvalidRecipe(RegistryError):
    """A recipe cannot run; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("the recipe is not valid:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class MergeStep(_Strict):
    sources: list[str] = Field(min_length=1)
    weights: list[float]
    method: str = "svd"
    params: dict[str, Any] = Field(default_factory=dict)
    name: str
    allow_cross_base: bool = False


class ValidateGates(_Strict):
    max_distance_from: dict[str, float] = Field(default_factory=dict)  # parent ref or @step -> max |logit diff|
    require_exact: bool = False


class ValidateStep(_Strict):
    target: str
    gates: ValidateGates = Field(default_factory=ValidateGates)


class PromoteStep(_Strict):
    target: str
    alias: str


class PublishStep(_Strict):
    target: str
    repo: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
    branch: str = "main"
    private: bool = False


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
        check_slug(self.name, "step name")
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
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _names(self) -> Recipe:
        check_slug(self.name, "recipe name")
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
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


def load_recipe(source: str | Path | dict[str, Any]) -> Recipe:
    """Parse a recipe (a YAML file path or a dict), raising :class:`InvalidRecipe` with every problem."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise InvalidRecipe([f"recipe file {path} does not exist"])
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise InvalidRecipe([f"{path} is not valid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise InvalidRecipe(["a recipe is a mapping with 'name' and 'steps'"])
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
