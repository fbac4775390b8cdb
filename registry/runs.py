"""Recipe runs: resolve and check everything up front, then advance the chain of jobs one step at a time.

A run's steps execute in order. Job steps (train, merge, validate, publish) are catalog jobs carrying the
run's id; promote is done inline. Whoever sees the current step's job finished (the job's own runner, or
the process that submitted it) advances the run, under a lock on the run row, so the chain moves exactly
once per step whether jobs run in-process or on Celery workers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import catalog
from registry import models as m
from registry.errors import IncompatibleAdapters, RegistryError
from registry.jobs import FINISHED
from registry.operations import submit as ops
from registry.operations.versions import move_alias
from registry.recipes import InvalidRecipe, Recipe, Step
from registry.refs import parse_ref

if TYPE_CHECKING:
    from registry.service import Service

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    id: int
    recipe_name: str
    status: str
    trigger: str
    message: str | None
    current_step: int
    steps: list[str]
    outputs: dict[str, Any]
    inputs: dict[str, Any]
    step_jobs: dict[str, Any]
    created_at: datetime
    finished_at: datetime | None
    fire_time: datetime | None = None
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        from registry.types import jsonable

        return jsonable(asdict(self))


def run_info(session: Session, row: m.Run) -> RunInfo:
    jobs = session.scalars(select(m.Job).where(m.Job.run_id == row.id).order_by(m.Job.id)).all()
    return RunInfo(
        id=row.id, recipe_name=row.recipe_name, status=row.status, trigger=row.trigger, message=row.message,
        current_step=row.current_step, steps=[s["name"] for s in row.recipe.get("steps", [])],
        outputs=dict(row.outputs or {}), inputs=dict(row.inputs or {}), step_jobs=dict(row.step_jobs or {}),
        created_at=row.created_at, finished_at=row.finished_at, fire_time=row.fire_time,
        jobs=[{"id": j.id, "kind": j.kind, "status": j.status, "parent_job_id": j.parent_job_id,
               "error": j.error_message} for j in jobs],
    )


def resolve_inputs(session: Session, recipe: Recipe) -> tuple[dict[str, Any], list[str]]:
    """Pin every catalog reference to an exact version and every data file to its sha256; check merges.

    Returns (inputs, problems). Merges whose sources are all catalog versions get the merge engine's full
    static validation now; merges that use an earlier step's output get their parameters checked.
    """
    from registry.inspect import sha256_file
    from registry.merge_rules import check_merge, check_params

    refs: dict[str, str] = {}
    data: dict[str, str] = {}
    problems: list[str] = []
    rows: dict[str, m.AdapterVersion] = {}
    for step in recipe.steps:
        for ref in recipe.references(step):
            if ref.startswith("@") or ref in refs:
                continue
            try:
                row = catalog.resolve(session, parse_ref(ref))
            except RegistryError as exc:
                problems.append(f"step {step.name}: {exc}")
                continue
            rows[ref] = row
            refs[ref] = catalog.exact_ref(session, row)
        body = step.body
        if step.kind == "train":
            from pathlib import Path

            path = Path(body.data).expanduser()
            if not path.is_file():
                problems.append(f"step {step.name}: data file {body.data} does not exist")
            else:
                data[body.data] = sha256_file(path)
        if step.kind == "merge":
            params = {k: v for k, v in body.params.items() if v is not None}
            if any(s.startswith("@") for s in body.sources):
                problems += [f"step {step.name}: {p}" for p in check_params(body.method, params)]
                if len(body.weights) != len(body.sources):
                    problems.append(f"step {step.name}: {len(body.weights)} weight(s) for {len(body.sources)} sources")
            elif all(s in rows for s in body.sources):
                try:
                    check_merge([catalog.manifest_of(session, rows[s]) for s in body.sources], body.weights,
                                body.method, params, allow_cross_base=body.allow_cross_base,
                                labels=[refs[s] for s in body.sources])
                except IncompatibleAdapters as exc:
                    problems += [f"step {step.name}: {p}" for p in exc.problems]
    return {"refs": refs, "data": data}, problems


def inputs_key(recipe: Recipe, inputs: dict[str, Any]) -> str:
    canonical = json.dumps({"recipe": recipe.model_dump(by_alias=True), "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def create_run(
    session: Session,
    recipe: Recipe,
    *,
    trigger: str = "manual",
    schedule_id: int | None = None,
    fire_time: datetime | None = None,
    idempotency_key: str | None = None,
) -> tuple[m.Run, bool]:
    """Insert the run row (or return the one with the same idempotency key). Raises InvalidRecipe first."""
    if idempotency_key is not None:
        existing = session.scalars(select(m.Run).where(m.Run.idempotency_key == idempotency_key)).one_or_none()
        if existing is not None:
            return existing, False
    inputs, problems = resolve_inputs(session, recipe)
    if problems:
        raise InvalidRecipe(problems)
    key = inputs_key(recipe, inputs)
    previous = session.scalars(
        select(m.Run).where(m.Run.recipe_name == recipe.name, m.Run.inputs_key == key, m.Run.status == "succeeded")
        .order_by(m.Run.id.desc())
    ).first()
    row = m.Run(
        recipe_name=recipe.name, recipe=recipe.model_dump(by_alias=True, exclude_none=True), trigger=trigger,
        schedule_id=schedule_id, fire_time=fire_time, idempotency_key=idempotency_key, inputs=inputs,
        inputs_key=key, outputs={}, step_jobs={}, current_step=0, created_at=m.utcnow(),
        status="skipped" if previous else "running",
        message=f"skipped: inputs unchanged (same as run {previous.id})" if previous else None,
        finished_at=m.utcnow() if previous else None,
    )
    session.add(row)
    session.flush()
    return row, True


def _locked_run(session: Session, run_id: int) -> m.Run:
    """The run row, locked on PostgreSQL (SQLAlchemy renders no FOR UPDATE on SQLite, whose writers are serial)."""
    return session.scalars(select(m.Run).where(m.Run.id == run_id).with_for_update()).one()


def _ref(run: m.Run, ref: str, outputs: dict[str, Any] | None = None) -> str:
    if ref.startswith("@"):
        return (run.outputs if outputs is None else outputs)[ref[1:]]
    return run.inputs["refs"][ref]


def _finish(run: m.Run, status: str, message: str | None = None) -> None:
    run.status = status
    run.message = message
    run.finished_at = m.utcnow()


def _check_gates(session: Session, run: m.Run, step: Step, job: m.Job) -> tuple[str | None, str | None]:
    """(output reference, failure message) for the succeeded job of ``step``."""
    body, report = step.body, job.report or {}
    if step.kind == "train":
        out = (report.get("registered") or [None])[0]
        limit = body.gates.max_eval_loss
        loss = report.get("eval_loss_after", float("inf"))
        if limit is not None and loss > limit:
            return out, f"gate max_eval_loss of step {step.name} failed: {loss:.4f} > {limit} (by {loss - limit:.4f})"
        return out, None
    if step.kind == "merge":
        return catalog.exact_ref(session, session.get(m.AdapterVersion, job.result_version_id)), None  # type: ignore[arg-type]
    target = _ref(run, body.target)
    if step.kind == "validate":
        distances = report.get("distance_from_parents", {})
        for parent, limit in body.gates.max_distance_from.items():
            ref = _ref(run, parent)
            if ref not in distances:
                return target, f"gate max_distance_from of step {step.name} failed: {ref} is not a parent of {target}"
            if distances[ref] > limit:
                return target, (f"gate max_distance_from {ref} of step {step.name} failed: distance "
                                f"{distances[ref]:.4g} > {limit} (by {distances[ref] - limit:.4g})")
        if body.gates.require_exact and "exact_check" not in report:
            return target, f"gate require_exact of step {step.name} failed: the merge method is not exact"
        if body.gates.min_retention is not None:
            return target, _retention_gate(step.name, target, report.get("retention"), body.gates.min_retention)
    return target, None


def _retention_gate(step: str, target: str, measured: Any, limit: float) -> str | None:
    """The failure of a validate step's ``min_retention`` gate, or None when every parent kept enough."""
    minimum = measured.get("min") if isinstance(measured, dict) else None
    if not isinstance(minimum, (int, float)):
        return (f"gate min_retention of step {step} failed: no retention was measured for {target} (it is not a "
                "merge whose parents have eval datasets or a held-out split; adreg data link REF NAME)")
    if minimum >= limit:
        return None
    worst = min((p for p in measured.get("parents", []) if isinstance(p.get("retention"), (int, float))),
                key=lambda p: p["retention"], default={"parent": "?"})
    return (f"gate min_retention of step {step} failed: {target} keeps {minimum:.3f} of {worst['parent']}'s skill "
            f"< {limit} (by {limit - minimum:.3f})")


def gates_checked(steps: list[Step]) -> bool:
    """Whether any of ``steps`` has a gate (a train step's ``max_eval_loss``, a validate step's ``max_distance_from``,
    ``require_exact`` or ``min_retention``). A run that reached the step after them passed every gate they
    have, so its promote step may move a protected alias."""
    for step in steps:
        gates = getattr(step.body, "gates", None)
        if gates is not None and any(value not in (None, False, {}) for value in gates.model_dump().values()):
            return True
    return False


def _submit_step(svc: Service, run: m.Run, step: Step, steps: list[Step]) -> int:
    """Submit the job of a job step of ``steps``; returns its id."""
    body = step.body
    if step.kind == "merge":
        # a merge a later step validates is not validated twice (the merge alone would be when its parents have
        # held-out data, to measure retention)
        checked = any(s.kind == "validate" and s.body.target == f"@{step.name}" for s in steps)
        job = ops.merge(svc, [_ref(run, s) for s in body.sources], weights=body.weights, method=body.method,
                        name=body.name, allow_cross_base=body.allow_cross_base, run_id=run.id,
                        validate=False if checked else None, **body.params)
    elif step.kind == "train":
        refs = [_ref(run, r) for r in [body.source, *body.joint_with] if r]
        job = ops.train(svc, refs[0] if refs else None, joint_with=refs[1:], data=body.data, steps=body.steps,
                        lr=body.lr, batch_size=body.batch_size, seed=body.seed, name=body.name, new=body.new,
                        base=body.base, run_id=run.id)
    elif step.kind == "validate":
        job = ops.validate(svc, _ref(run, body.target), run_id=run.id)
    else:
        job = ops.publish(svc, _ref(run, body.target), body.repo, branch=body.branch, private=body.private,
                          run_id=run.id)
    return job.id


_advancing = threading.local()  # the runs this thread is advancing right now


def advance_run(svc: Service, run_id: int) -> None:
    """Move the run forward as far as finished work allows; safe to call from anywhere, any number of times.

    The run ends ``succeeded`` or ``failed`` whenever no unfinished job holds it: an error in a step (an alias
    that cannot be set, a step that cannot start, a recipe row that no longer validates, a bug) fails the run
    with the step's name instead of leaving it ``running``. A call made while this thread is already advancing
    the same run (an in-process job finishing inside its step's submission) returns at once: the outer loop
    sees the finished job and goes on, so the stack does not grow with the number of steps.
    """
    active: set[int] = _advancing.__dict__.setdefault("runs", set())
    if run_id in active:
        return
    active.add(run_id)
    try:
        _advance(svc, run_id)
    finally:
        active.discard(run_id)


def _fail_run(svc: Service, run_id: int, message: str) -> None:
    with svc.transaction() as s:
        run = _locked_run(s, run_id)
        if run.status == "running":
            _finish(run, "failed", message)


def _advance(svc: Service, run_id: int) -> None:
    recipe: Recipe | None = None
    where = "the run"

    def walk(s: Session, run: m.Run, recipe: Recipe) -> Step | None:
        """Move the locked run over promote steps and finished jobs, in this transaction; return the step whose
        job is to be submitted, or None when the run ended or waits for a job. Outputs are kept locally and
        written once (a run of many promote steps costs one transaction, not one per step)."""
        nonlocal where
        outputs, current = dict(run.outputs or {}), run.current_step

        def sync() -> None:
            if outputs != run.outputs:
                run.outputs = dict(outputs)
            run.current_step = current

        try:
            while current < len(recipe.steps):
                step = recipe.steps[current]
                where = f"step {step.name}"
                if step.kind == "promote":
                    body = step.body
                    target = _ref(run, body.target, outputs)
                    try:
                        with s.begin_nested():  # a refused promote leaves the earlier ones in place
                            move_alias(s, f"recipe {run.recipe_name} (run {run.id})",
                                       catalog.resolve(s, parse_ref(target)), body.alias, svc.store.root,
                                       gate_passed=gates_checked(recipe.steps[:current]))
                    except RegistryError as exc:
                        _finish(run, "failed", f"{where} failed: {exc}")
                        return None
                    outputs[step.name] = target
                    current += 1
                    continue
                marker = (run.step_jobs or {}).get(step.name)
                if marker is None:
                    run.step_jobs = {**(run.step_jobs or {}), step.name: "pending"}
                    return step
                job = _step_job(s, run, marker)
                if job is None or job.status not in FINISHED:
                    return None
                if job.status != "succeeded":
                    _finish(run, "failed", f"{where} ({job.kind} job {job.id}) {job.status}: {job.error_message}")
                    return None
                sync()
                output, failure = _check_gates(s, run, step, job)
                if failure:
                    _finish(run, "failed", failure)
                    return None
                outputs[step.name] = output
                run.step_jobs = {**run.step_jobs, step.name: job.id}
                current += 1
            _finish(run, "succeeded", f"{len(recipe.steps)} step(s) done")
            return None
        finally:
            sync()

    # Each pass ends the run, waits for a job, or submits one: one pass per job step and one to finish suffice.
    passes = 0
    while True:
        submit: Step | None = None
        try:
            with svc.transaction() as s:
                run = _locked_run(s, run_id)
                if run.status != "running":
                    return
                if recipe is None:
                    recipe = Recipe.model_validate(run.recipe)
                passes += 1
                if passes > len(recipe.steps) + 1:
                    _finish(run, "failed", f"run {run_id} made no progress at step {run.current_step + 1}")
                    return
                submit = walk(s, run, recipe)
                if submit is None:
                    return
        except Exception as exc:  # a bug or a stored recipe that no longer validates: fail the run, never strand it
            if not isinstance(exc, RegistryError):
                log.exception("run %s: %s failed", run_id, where)
            reason = exc if isinstance(exc, RegistryError) else f"{type(exc).__name__}: {exc}"
            _fail_run(svc, run_id, f"{where} failed: {reason}")
            return
        try:
            job_id = _submit_step(svc, run, submit, recipe.steps)
        except Exception as exc:
            if not isinstance(exc, RegistryError):
                log.exception("run %s: step %s could not start", run_id, submit.name)
            _fail_run(svc, run_id, f"step {submit.name} could not start: {exc}")
            return
        with svc.transaction() as s:
            run = _locked_run(s, run_id)
            if (run.step_jobs or {}).get(submit.name) == "pending":
                run.step_jobs = {**run.step_jobs, submit.name: job_id}


def _step_job(session: Session, run: m.Run, marker: Any) -> m.Job | None:
    """The current step's job: by its recorded id, or (while the submitter has not recorded it yet) the
    run's newest top-level job if no earlier step owns it."""
    if isinstance(marker, int):
        return session.get(m.Job, marker)
    owned = {v for v in (run.step_jobs or {}).values() if isinstance(v, int)}
    job = session.scalars(select(m.Job).where(m.Job.run_id == run.id, m.Job.parent_job_id.is_(None))
                          .order_by(m.Job.id.desc())).first()
    return None if job is None or job.id in owned else job
