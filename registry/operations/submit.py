"""Job operations: merge, train, validate and publish requests checked in full, then submitted; job status.

Every check runs before a job row exists; :func:`submit` writes the row (committed) and hands its id to the
service's executor.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry import audit, catalog, jobs, queries
from registry import models as m
from registry.base_identity import card_base_model
from registry.errors import ConflictError, RegistryError, field_problems
from registry.inspect import inspect_adapter
from registry.manifest import AdapterManifest
from registry.operations import lifecycle
from registry.refs import parse_ref
from registry.service import Service
from registry.targets import head_labels
from registry.trainset import CLASSIFICATION_TASKS, base_head_labels, task_for_architecture


def _invalid(what: str, exc: ValidationError) -> RegistryError:
    """A pydantic error as one line per field, for a user who never wrote the spec by hand."""
    return RegistryError(f"invalid {what}: " + "; ".join(field_problems(exc, what)))


def merge(
    svc: Service,
    sources: list[str],
    *,
    weights: list[float] | None = None,
    method: str = "svd",
    name: str,
    density: float | None = None,
    svd_rank: int | None = None,
    svd_clamp: float | None = None,
    majority_sign_method: str = "total",
    seed: int | None = None,
    scale: float | None = None,
    tsv_fraction: float | None = None,
    common_fraction: float | None = None,
    knots_inner: str | None = None,
    core_inner: str | None = None,
    dtype: str | None = None,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    allow_cross_base: bool = False,
    validate: bool | None = None,
    publish_to: str | jobs.PublishTarget | None = None,
    idempotency_key: str | None = None,
    run_id: int | None = None,
    learn_weights: bool = False,
    learn_examples: int = 32,
    learn_budget: int = 40,
    learn_objective: str = "mean",
) -> jobs.Job:
    """Merge catalog versions into a new version of ``name``; returns the job.

    ``weights``: one per source. With ``learn_weights`` they are learned first (LoraHub-style, docs/merge.md
    "Learned weights"): ``learn_budget`` Adam steps on the mixture coefficients, minimising the mean loss on
    ``learn_examples`` rows of each source's held-out data (pinned here) plus an L1 term, from ``weights``
    (default 1/n each), the rows drawn with ``seed`` (default 0); ``learn_objective`` ``"worst"`` minimises
    instead a smooth maximum of the sources' normalised losses (aimed at the worst-off source; ``"mean"``, the
    default, is LoraHub's mean loss); the learned weights are merged with ``method``
    and go on the lineage edges, the search's trace in the job's report. Every source must be a causal LM with a
    base and held-out data (``eval`` datasets or a training's ``heldout`` split); the job runs on the GPU queue.

    ``validate`` chains a runtime validation job: True always, False never, None (the default) when the
    parents have held-out data (``eval`` datasets, else a training's ``heldout`` split), pinned here, on
    which the validation measures how much of each parent's skill the merge keeps (retention, in the merge's
    report). ``publish_to`` (a Hub repo id) chains validation and then a publish job that runs only if every
    check passed.

    Every static check runs first, on stored metadata only, and reports every problem at once
    (:class:`IncompatibleAdapters`); nothing is queued unless all pass. On the embedded default the
    job runs in-process before this returns; with a broker, a worker runs it (``job.wait()``).
    """
    from registry.merge_rules import check_merge
    from registry.operations.datasets import parent_evals

    if learn_objective not in jobs.LEARN_OBJECTIVES:
        raise RegistryError(f"unknown learn objective {learn_objective!r}: choose mean (the mean held-out loss, "
                            "LoraHub's) or worst (the worst-off source's normalised loss)")
    if learn_objective != "mean" and not learn_weights:
        raise RegistryError(f"the learn objective {learn_objective!r} needs learned weights (learn_weights=True, "
                            "--learn-weights)")
    params = {"density": density, "svd_rank": svd_rank, "svd_clamp": svd_clamp,
              "majority_sign_method": majority_sign_method, "seed": seed, "scale": scale,
              "tsv_fraction": tsv_fraction, "common_fraction": common_fraction,
              "knots_inner": knots_inner,
              "core_inner": core_inner}
    with svc.transaction() as session:
        rows = [catalog.resolve(session, parse_ref(ref)) for ref in sources]  # a deleted input is refused
        refs = [catalog.exact_ref(session, r) for r in rows]
        manifests = [catalog.manifest_of(session, r) for r in rows]
        warnings = lifecycle.input_warnings(rows, refs)
        evals = parent_evals(session, svc.store, [(r.id, ref) for r, ref in zip(rows, refs, strict=True)])
        learn = _learn_spec(rows, refs, manifests, evals, learn_examples, learn_budget, seed,
                            learn_objective) if learn_weights else None
    if learn is not None:
        from registry.merge_rules import METHODS

        if weights is None:  # 1/n each (no source: check_merge below says there is nothing to merge)
            weights = [1.0 / len(sources)] * len(sources) if sources else []
        if method in METHODS and "seed" not in METHODS[method].accepts:
            params["seed"] = None  # the search's seed only
    elif weights is None:
        raise RegistryError("give one weight per source (weights=[...], --weights 0.5 0.5), or learn them "
                            "(learn_weights=True, --learn-weights)")
    check_merge(manifests, list(weights), method, {k: v for k, v in params.items() if v is not None},
                allow_cross_base=allow_cross_base, labels=refs)
    if isinstance(publish_to, str):
        publish_to = publish_target(publish_to)
    if publish_to is not None:
        card_base_model(manifests[0].base_model_name_or_path, publish_to.base_model_id, f"the merge {name!r}")
    try:
        spec = jobs.MergeSpec(
            sources=[jobs.SourceRef(ref=ref, version_id=r.id, weights_sha256=r.weights_sha256,
                                    storage_path=r.storage_path) for ref, r in zip(refs, rows, strict=True)],
            weights=list(weights), method=method, params=jobs.MergeParams(**params, dtype=dtype), name=name,
            tags=dict(tags or {}), description=description, allow_cross_base=allow_cross_base,
            validate_after=bool(validate or publish_to is not None or (validate is None and evals)),
            publish_to=publish_to, warnings=warnings, parent_evals=evals, learn=learn,
        )
    except ValidationError as exc:
        raise _invalid("merge request", exc) from None
    return submit(svc, spec, idempotency_key=idempotency_key, run_id=run_id)


def _learn_spec(rows: list[m.AdapterVersion], refs: list[str], manifests: list[AdapterManifest],
                evals: list[jobs.ParentEval], examples: int, budget: int, seed: int | None,
                objective: str = "mean") -> jobs.LearnWeights:
    """The search of a merge that learns its weights, once every source can take part in it (else every problem,
    naming each source)."""
    with_data = {e.version_id for e in evals}
    problems = []
    for row, ref, manifest in zip(rows, refs, manifests, strict=True):
        if (row.task_type or "CAUSAL_LM") != "CAUSAL_LM":
            problems.append(f"{ref} is a {row.task_type} adapter: learned weights need causal LMs (CAUSAL_LM)")
        elif row.base_model_id is None:
            problems.append(f"{ref} has no base model recorded")
        elif manifest.extra_tensors:
            problems.append(f"{ref} has fully trained modules or trainable tokens (modules_to_save, "
                            "trainable_token_indices), which the search of the LoRA mixture cannot weight")
    missing = [ref for row, ref in zip(rows, refs, strict=True)
               if row.id not in with_data and (row.task_type or "CAUSAL_LM") == "CAUSAL_LM"]
    if missing:
        problems.append(f"no held-out data for {', '.join(missing)}: learned weights are fitted to each source's "
                        "eval datasets (else its training's heldout split); link one with `adreg data link REF NAME` "
                        "(Registry.link_dataset)")
    if problems:
        raise RegistryError("cannot learn the merge weights: " + "; ".join(problems))
    try:
        return jobs.LearnWeights(examples=examples, budget=budget, seed=0 if seed is None else seed,
                                 objective=objective)
    except ValidationError as exc:
        raise _invalid("learned weights", exc) from None


def validate(svc: Service, ref: str, *, idempotency_key: str | None = None, run_id: int | None = None) -> jobs.Job:
    """Queue a runtime validation of a version against its base model's real weights (for a merge whose parents
    have held-out data, with the retention of each parent's skill on it)."""
    from registry.operations.datasets import parent_evals

    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        exact = catalog.exact_ref(session, row)
        parents = [session.get(m.AdapterVersion, pid) for pid, _w in catalog.merge_parents(session, row.id)]
        evals = parent_evals(session, svc.store, [(p.id, catalog.exact_ref(session, p)) for p in parents
                                                  if p is not None and p.status != "deleted"])
    return submit(svc, jobs.ValidateSpec(version_id=row.id, ref=exact, parent_evals=evals),
                  idempotency_key=idempotency_key, run_id=run_id)


EVALUATED_TASKS = ("CAUSAL_LM", *CLASSIFICATION_TASKS)  # what an eval job measures (seq2seq, embeddings: not yet)


def evaluate(svc: Service, ref: str, *, data: list[str] | None = None, max_length: int = 256, batch_size: int = 8,
             max_rows: int | None = 1000, idempotency_key: str | None = None, run_id: int | None = None) -> jobs.Job:
    """Queue an evaluation of version ``ref`` and of its bare base on catalog datasets ``data`` (names or
    ``name:N``; default: the datasets linked to the version as ``eval``, else its training's ``heldout`` split),
    recorded as the version's metrics (dataset ``name:N``, source ``eval``, the job id; the base's prefixed
    ``base_``). Causal LMs: loss, perplexity and token accuracy per dataset; every dataset must have causal-LM
    columns (``text``, ``prompt`` + ``completion`` or ``messages``). Classifiers (SEQ_CLS: ``text`` + ``label``;
    TOKEN_CLS: ``labels`` per word with ``tokens`` or ``text``): loss, accuracy and macro-F1, every label a class of
    the adapter's head. SEQ_2_SEQ_LM and FEATURE_EXTRACTION adapters are refused."""
    from registry.operations.datasets import check_class_labels, eval_specs, find, held_out

    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        exact = catalog.exact_ref(session, row)
        task = (row.task_type or "CAUSAL_LM").upper()
        if task not in EVALUATED_TASKS:
            raise RegistryError(f"{exact} is a {task} adapter; evaluation measures {', '.join(EVALUATED_TASKS)} "
                                "adapters only (no loss or accuracy is defined here for its outputs)",
                                hint=f"`adreg validate {exact}` checks it on its base")
        if row.base_model_id is None:
            raise RegistryError(f"{exact} has no base model recorded")
        classes, owner = (_head_size(session, row, exact, task) if task in CLASSIFICATION_TASKS else (None, ""))
        rows = [find(session, name) for name in dict.fromkeys(data)] if data else held_out(session, row.id)
        if not rows:
            raise RegistryError(f"{exact} has no eval datasets or held-out split linked; name them (data=[...], "
                                "--data NAME) or link one (adreg data link REF NAME)")
        specs = eval_specs(svc.store, rows, task)
    if task in CLASSIFICATION_TASKS:
        specs = check_class_labels(specs, task, classes, owner)
    try:
        spec = jobs.EvalSpec(version_id=row.id, ref=exact, datasets=specs, max_length=max_length,
                             batch_size=batch_size, max_rows=max_rows)
    except ValidationError as exc:
        raise _invalid("evaluation", exc) from None
    return submit(svc, spec, idempotency_key=idempotency_key, run_id=run_id)


def _head_size(session: Session, row: m.AdapterVersion, exact: str, task: str) -> tuple[int | None, str]:
    """The number of classes of the head a classification version is scored with, and whose head it is: the one the
    adapter stores (``modules_to_save``), else its base's own head of this task (None when the base's files are not
    here to read). A version with neither is refused: only a random head would score it."""
    classes = head_labels(row.extra_tensors or {})
    if classes is not None:
        return classes, f"{exact}'s classification head"
    base = session.get(m.BaseModelRecord, row.base_model_id)
    if base is None or task_for_architecture(base.architecture, base.model_type) != task:
        raise RegistryError(f"{exact} is a {task} adapter that stores no classification head (no 'classifier' or "
                            f"'score' in its modules_to_save) and its base "
                            f"({base.architecture if base is not None else 'unknown'}) has none either: only a "
                            "random head would be evaluated")
    path = base.local_path
    return (base_head_labels(path) if path and Path(path).is_dir() else None,
            f"the base's classification head ({base.architecture})")


def submit(
    svc: Service, spec: jobs.AnySpec, *, idempotency_key: str | None = None, parent_job_id: int | None = None,
    run_id: int | None = None,
) -> jobs.Job:
    """Write the job row (committed), then hand its id to the executor.

    With an ``idempotency_key`` already used, the first job is returned and nothing new is queued (a retry
    after a lost answer or an unreachable broker is safe). A broker that cannot be reached raises
    :class:`~registry.errors.BrokerUnavailable`: the job exists and the recovery sweep sends it later.
    """
    queue = jobs.queue_for(spec)
    if queue == "gpu" and svc.settings.gpu_queue_fallback:
        queue = "cpu"
    if spec.submitted_by is None:
        spec = spec.model_copy(update={"submitted_by": svc.actor})
    with svc.transaction() as session:
        row, created = jobs.insert_job(
            session, spec, queue=queue, idempotency_key=idempotency_key, parent_job_id=parent_job_id,
            run_id=run_id,
        )
        job_id = row.id
        if created:
            audit.record(session, spec.submitted_by or svc.actor, "job.submit",
                         adapter_name=jobs.written_names(spec)[0], ref=getattr(spec, "ref", None),
                         after={"job": job_id, "kind": spec.kind, "names": jobs.written_names(spec)})
    if created:
        svc.executor.dispatch(job_id, queue)
    return job(svc, job_id)


def job(svc: Service, job_id: int) -> jobs.Job:
    with svc.sessions() as session:
        row = session.get(m.Job, job_id)
        if row is None:
            raise RegistryError(f"no job {job_id}", hint="see `adreg jobs`")
        return jobs.job_from_row(session, row)


def wait_job(svc: Service, job_id: int, *, timeout: float = 20.0) -> jobs.Job:
    """The job once it has finished, or as it stands after ``timeout`` seconds (at most 30): a long poll."""
    import time

    deadline = time.monotonic() + max(0.0, min(timeout, 30.0))
    current = job(svc, job_id)
    while not current.done and time.monotonic() < deadline:
        time.sleep(0.1)
        current = job(svc, job_id)
    return current


def list_jobs(svc: Service, *, status: str | None = None, kind: str | None = None, parent_job_id: int | None = None,
         limit: int = 50) -> list[jobs.Job]:
    """Recent jobs, newest first (only the follow-ups of ``parent_job_id`` when given)."""
    if status is not None and status not in jobs.STATUSES:
        raise RegistryError(f"status must be one of {', '.join(jobs.STATUSES)}")
    with svc.sessions() as session:
        queries.check_page(limit)
        query = select(m.Job).order_by(m.Job.id.desc()).limit(limit)
        if status:
            query = query.where(m.Job.status == status)
        if kind:
            query = query.where(m.Job.kind == kind)
        if parent_job_id is not None:
            query = query.where(m.Job.parent_job_id == parent_job_id)
        return [jobs.job_from_row(session, r) for r in session.scalars(query)]


def cancel(svc: Service, job_id: int) -> str:
    """Cancel a queued job, or ask a running one to stop; returns ``cancelled`` or ``cancelling``."""
    with svc.transaction() as session:
        status = jobs.request_cancel(session, job_id)
        row = session.get(m.Job, job_id)
        names = jobs.written_names(jobs.parse_spec(row.spec)) if row is not None else []
        audit.record(session, svc.actor, "job.cancel", adapter_name=names[0] if names else None,
                     after={"job": job_id, "status": status})
        return status


def train(
    svc: Service,
    source: str | None = None,
    *,
    data: str | Path,
    steps: int = 100,
    lr: float = 1e-4,
    name: str | None = None,
    new: jobs.LoraSpec | dict | None = None,
    base: str | None = None,
    joint_with: list[str] | None = None,
    active: list[int] | None = None,
    lrs: list[float] | None = None,
    batch_size: int = 4,
    grad_accum: int = 1,
    max_length: int = 256,
    eval_rows: int | None = None,
    seed: int = 0,
    checkpoint_every: int = 50,
    bf16: bool = False,
    gradient_checkpointing: bool = False,
    tags: dict[str, str] | None = None,
    validate: bool = False,
    idempotency_key: str | None = None,
    run_id: int | None = None,
    task_type: str | None = None,
    reuse_name: bool = False,
) -> jobs.Job:
    """Continue ``source`` (and ``joint_with``, trained together), or create a ``new`` adapter on ``base``.

    Everything is checked before a job exists: the data file (readable, non-empty, known columns),
    the sources (catalog versions on one base with local weights), and for a new adapter its
    targets, which are resolved to explicit module names of the base (``all-linear`` is expanded;
    anything that is not a linear or embedding module of the base is refused with the valid list).
    Each trained adapter is registered as a new version (continuing: of its own name, or ``name``).
    ``eval_rows`` rows are held out for the eval loss before and after (default: a tenth, at most 200).

    ``task_type`` (CAUSAL_LM, SEQ_CLS, TOKEN_CLS, SEQ_2_SEQ_LM) is a new adapter's PEFT task type, by default
    the one the base's architecture serves; a continued adapter keeps its own. Any other task type is
    refused here, listing the supported ones, and the data file must have the task's columns.
    A ``new`` adapter's ``name`` must not exist yet unless ``reuse_name``.
    """
    from registry.targets import resolve_targets, saved_modules
    from registry.trainset import (
        CLASSIFICATION_TASKS,
        check_trainable_task,
        describe_dataset,
        head_size,
        task_for_architecture,
    )

    refs = ([source] if source else []) + list(joint_with or [])
    if new is not None and refs:
        raise RegistryError("give either sources to continue or `new` to create an adapter, not both")
    if new is None and not refs:
        raise RegistryError("nothing to train: give a source version (or several with joint_with), or `new`")
    for ref in refs:
        parsed = parse_ref(ref)
        if parsed.path is not None:
            inspect_adapter(parsed.path)  # refuses pickles and broken folders with the precise reason
            raise RegistryError(f"{ref} is a folder: register it first (`adreg register {ref} --name NAME`)")
    with svc.transaction() as session:
        rows = [catalog.resolve(session, parse_ref(ref)) for ref in refs]
        if new is not None:
            if not base:
                raise RegistryError("a new adapter needs a base model (`base=`, `--base`)")
            base_row = catalog.find_base(session, base)
            default_task = task_for_architecture(base_row.architecture, base_row.model_type)
            if task_type is None and default_task is None:
                raise RegistryError(f"cannot tell the task type of base {base_row.name!r} from its architecture "
                                    f"{base_row.architecture!r}: give task_type= (--task-type)")
            task = check_trainable_task(task_type or default_task, f"a new adapter on {base_row.name!r}")
            if default_task == "FEATURE_EXTRACTION":  # a bare model: the task's model class nests it
                raise RegistryError(
                    f"base {base_row.name!r} is a bare {base_row.architecture}: a {task} model wraps it "
                    "(module paths gain a prefix), so the adapter would not fit the recorded base",
                    hint="register the base as the task's architecture (e.g. a *ForSequenceClassification "
                         "checkpoint) and train on that")
            lora = new if isinstance(new, jobs.LoraSpec) else None
            raw = lora.model_dump() if lora else dict(new)
            raw["targets"] = resolve_targets(base_row.module_shapes, raw.get("targets") or [],
                                             ("classifier", "score") if task in CLASSIFICATION_TASKS else ())
            if not name:
                raise RegistryError("a new adapter needs a name")
            if not reuse_name and catalog.adapter_exists(session, name):
                raise ConflictError(
                    f"an adapter named {name!r} exists: a new adapter would become its next version, with other "
                    "targets and rank and no lineage to it",
                    hint=f"continue it with `adreg train {name} ...`, choose another name, or pass --reuse-name "
                         "(reuse_name=True) to add an unrelated version under this name")
            names = [name]
        else:
            base_ids = {r.base_model_id for r in rows}
            if len(base_ids) != 1 or None in base_ids:
                raise RegistryError("jointly trained adapters must share one recorded base model")
            base_row = session.get(m.BaseModelRecord, rows[0].base_model_id)
            adapter_names = [session.get(m.Adapter, r.adapter_id).name for r in rows]
            if name and len(rows) > 1:
                raise RegistryError("`name` applies to a single adapter; joint runs keep each adapter's name")
            names = [name] if name else adapter_names
            refs = [f"{n}:{r.version}" for n, r in zip(adapter_names, rows, strict=True)]
            tasks = {r.task_type or task_for_architecture(base_row.architecture, base_row.model_type)
                     for r in rows}
            if len(tasks) != 1:
                raise RegistryError(f"jointly trained adapters must share one task type: {sorted(map(str, tasks))}")
            task = check_trainable_task(tasks.pop(), f"continuing {', '.join(refs)}")
            if task_type is not None and task_type.strip().upper() != task:
                raise RegistryError(f"{refs[0]} is a {task} adapter; a continued adapter keeps its task type")
            owners: dict[str, str] = {}
            for ref, r in zip(refs, rows, strict=True):
                for module in saved_modules(r.extra_tensors or {}, r.modules_to_save)[0]:
                    if module in owners:
                        raise RegistryError(
                            f"{owners[module]} and {ref} both train module {module!r} in full (modules_to_save): "
                            "PEFT activates only one copy of such a module, so they cannot be trained jointly")
                    owners[module] = ref
        if not base_row.local_path:
            raise RegistryError(f"base model {base_row.name!r} has no local weights recorded",
                                hint="register an adapter with --base-path DIR pointing at the base folder")
        sources = [jobs.SourceRef(ref=ref, version_id=r.id, weights_sha256=r.weights_sha256,
                                  storage_path=r.storage_path) for ref, r in zip(refs, rows, strict=True)]
        warnings = lifecycle.input_warnings(rows, refs)
        base_id = base_row.id
        base_info = (base_row.architecture, base_row.model_type, base_row.local_path)
        sources_extra = [dict(r.extra_tensors or {}) for r in rows]
    data_spec = describe_dataset(data, task)
    num_labels = head_size(task, *base_info, sources_extra, data_spec)
    try:
        spec = jobs.TrainSpec(
            sources=sources, new=jobs.LoraSpec(**raw) if new is not None else None, base_model_id=base_id,
            task_type=task, num_labels=num_labels,
            names=names, active=active, data=data_spec, steps=steps, lr=lr, lrs=lrs, batch_size=batch_size,
            grad_accum=grad_accum, max_length=max_length, eval_rows=eval_rows, seed=seed,
            checkpoint_every=checkpoint_every, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
            tags=dict(tags or {}), validate_after=validate, warnings=warnings,
        )
    except ValidationError as exc:
        raise _invalid("training request", exc) from None
    if lrs is not None and len(lrs) != len(names):
        raise RegistryError(f"lrs has {len(lrs)} values for {len(names)} adapter(s)")
    if active is not None and any(i < 0 or i >= len(names) for i in active):
        raise RegistryError(f"active indices must be in 0..{len(names) - 1}")
    if eval_rows is not None and eval_rows >= data_spec.rows:
        raise RegistryError(f"eval_rows={eval_rows} leaves no training rows: {data} has {data_spec.rows} row(s)")
    return submit(svc, spec, idempotency_key=idempotency_key, run_id=run_id)


def publish(
    svc: Service, ref: str, repo_id: str, *, branch: str = "main", private: bool = False, create_pr: bool = False,
    base_model_id: str | None = None, idempotency_key: str | None = None, run_id: int | None = None,
) -> jobs.Job:
    """Push a version to a Hub repository with a model card that records its base, lineage and evidence.

    The card's ``base_model`` is the version's base when that is a Hub id, else ``base_model_id`` (e.g. the
    Hub id a local base folder was downloaded from); with neither, it is refused before any job exists.
    Publishing the same version to the same repo and branch again is a no-op (the remote weights'
    sha256 is compared). The token comes from ``HF_TOKEN`` or ``huggingface_hub``'s login and is
    never stored.
    """
    target = publish_target(repo_id, branch=branch, private=private, create_pr=create_pr,
                                  base_model_id=base_model_id)
    with svc.transaction() as session:
        row = catalog.resolve(session, parse_ref(ref))
        exact = catalog.exact_ref(session, row)
        base = session.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
        card_base_model(base.name if base else None, target.base_model_id, exact)
    return submit(svc, jobs.PublishSpec(version_id=row.id, ref=exact, target=target),
                       idempotency_key=idempotency_key, run_id=run_id)


def publish_target(repo_id: str, **options: object) -> jobs.PublishTarget:
    """A validated Hub target (``branch``, ``private``, ``create_pr``, ``base_model_id``) for ``publish_to=``."""
    try:
        return jobs.PublishTarget(repo_id=repo_id, **options)
    except ValidationError as exc:
        raise _invalid(f"Hub target {repo_id!r}", exc) from None
