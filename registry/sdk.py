"""The ``Registry`` facade: the one object users (and the CLI) talk to."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select

from registry import catalog, jobs, queries
from registry import models as m
from registry import types as t
from registry.base_identity import card_base_model, resolve_base
from registry.basemodel import describe_base
from registry.config import Settings
from registry.db import ensure_schema, make_engine, session_factory, transaction, upgrade
from registry.errors import ConflictError, InvalidReference, RegistryError, field_problems
from registry.inspect import inspect_adapter, weights_path
from registry.manifest import check_text
from registry.refs import Ref, check_slug, check_tag, parse_ref
from registry.runs import RunInfo
from registry.store import ArtifactStore


def _invalid(what: str, exc: ValidationError) -> RegistryError:
    """A pydantic error as one line per field, for a user who never wrote the spec by hand."""
    return RegistryError(f"invalid {what}: " + "; ".join(field_problems(exc, what)))


class Registry:
    """A catalog of LoRA adapters.

    ``Registry()`` opens the embedded SQLite catalog under ``$ADREG_HOME`` (default ``~/.adreg``),
    creating it on first use; ``Registry("postgresql+psycopg://host/db")`` (or ``ADREG_DATABASE_URL``)
    opens a shared one, which must have been created with ``adreg init``.
    """

    def __init__(
        self, database_url: str | None = None, *, home: str | Path | None = None,
        on_progress: Callable[[int, float, str | None], None] | None = None,
    ) -> None:
        """``on_progress(job_id, fraction, message)`` hears the progress of jobs run in this process (the
        embedded default's local executor); jobs on Celery workers report through ``Job.refresh()``."""
        self.settings = Settings.from_env(database_url, home)
        self._on_progress = on_progress
        self.engine = make_engine(self.settings.database_url)
        ensure_schema(self.engine)
        self._sessions = session_factory(self.engine)
        self.store = ArtifactStore(self.settings.artifact_dir)
        self._executor: jobs.LocalExecutor | jobs.CeleryExecutor | None = None
        if self.settings.is_sqlite and not self.settings.broker_url:  # embedded: no worker sweeps for us
            with transaction(self._sessions) as session:
                jobs.fail_orphaned_local_jobs(session, self.store.root, self.settings.job_lease_seconds)

    @property
    def executor(self) -> jobs.LocalExecutor | jobs.CeleryExecutor:
        """Celery when ``ADREG_BROKER_URL`` is set, else the in-process local executor."""
        if self._executor is None:
            if self.settings.broker_url:
                self._executor = jobs.CeleryExecutor(self.settings.broker_url)
            else:
                self._executor = jobs.LocalExecutor(self, self._on_progress)
        return self._executor

    @staticmethod
    def init(database_url: str | None = None, *, home: str | Path | None = None) -> str:
        """Create or upgrade the catalog's schema to the newest revision; return the database URL."""
        settings = Settings.from_env(database_url, home)
        engine = make_engine(settings.database_url)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        return engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- registration -------------------------------------------------------------------------

    def register(
        self,
        source: str | Path,
        *,
        name: str,
        tags: dict[str, str] | None = None,
        base: str | None = None,
        base_path: str | Path | None = None,
        revision: str | None = None,
        description: str | None = None,
        parents: list[catalog.ParentSpec] | None = None,
    ) -> t.AdapterVersion:
        """Register the adapter folder ``source`` as the next version of ``name``.

        The base model is ``base`` or the adapter config's ``base_model_name_or_path`` (at ``revision``
        or the config's); its architecture and module shapes are read from ``base_path`` (or from the
        base name itself when it is a local folder). Registering the same weights under the same name
        again returns the existing version (with any new tags applied).
        """
        check_slug(name)
        for key, value in (tags or {}).items():
            check_tag(key, value)
        check_text(description, "description", multiline=True)
        check_text(revision, "revision")
        ref = parse_ref(str(source)) if isinstance(source, str) else Ref(path=Path(source))
        source_uri: str | None = None
        root: Path | None = None  # where the folder's files may resolve to: the folder itself, for a local one
        if ref.hub_repo:
            from workers.hub import fetch_adapter, resolve_base_revision

            folder, commit = fetch_adapter(ref.hub_repo, ref.hub_revision)
            source_uri = f"hf://{ref.hub_repo}@{commit}"
            root = folder.parents[1]  # the Hub cache: snapshots/<commit>/ files link to the repository's blobs/
        elif ref.path is None:
            raise InvalidReference(f"{source!r} is not a folder path (write ./{source} for a local folder)")
        else:
            folder = ref.path
        manifest = inspect_adapter(folder, root=root, max_bytes=self.settings.max_adapter_bytes)
        if ref.hub_repo:
            base_name = base or manifest.base_model_name_or_path
            if base_name and revision is None:
                revision = resolve_base_revision(base_name, manifest.revision)  # pin the base to a commit too
            identity = resolve_base(base_name, adapter_folder=None, base_path=base_path, explicit=True)
        else:
            identity = resolve_base(base or manifest.base_model_name_or_path, adapter_folder=folder,
                                    base_path=base_path, explicit=base is not None)
        description_of_base = describe_base(identity.local_path) if identity.local_path is not None else None
        base_revision = revision or manifest.revision
        # Check first, copy last: everything that can refuse runs (in a transaction rolled back) before the
        # weights are copied, so a refused registration writes nothing. The final transaction checks again.
        with self._sessions() as session:
            catalog.check_fits(manifest, catalog.upsert_base(
                session, identity.name, base_revision, description_of_base, identity.local_path))
            session.rollback()
        storage = self.store.put_adapter(weights_path(folder, root=root), manifest.weights_sha256, manifest.config)
        with transaction(self._sessions) as session:
            base_row = catalog.upsert_base(
                session, identity.name, base_revision, description_of_base, identity.local_path
            )
            row, created = catalog.register_version(
                session, name, manifest, storage, base_row, tags=tags,
                source_uri=source_uri or str(folder.resolve()), description=description, parents=parents,
            )
            if not created and tags:
                catalog.set_tags(session, row, tags)
            return queries.describe(session, [row], self.store.root)[0]

    # -- queries --------------------------------------------------------------------------------

    def get(self, ref: str) -> t.AdapterVersion:
        """The version ``ref`` names: ``name`` (latest), ``name:3`` or ``name@alias``."""
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            return queries.describe(session, [row], self.store.root)[0]

    def search_page(self, filters: queries.SearchFilters) -> t.SearchPage:
        with transaction(self._sessions) as session:
            rows, total = queries.search(session, filters)
            items = queries.describe(session, rows, self.store.root)
            return t.SearchPage(items=items, total=total, limit=filters.limit, offset=filters.offset)

    def search(
        self,
        *,
        base_model: str | None = None,
        tags: dict[str, str] | None = None,
        task_type: str | None = None,
        peft_type: str | None = None,
        min_rank: int | None = None,
        max_rank: int | None = None,
        target_module: str | None = None,
        name_like: str | None = None,
        status: str | None = "ready",
        sort: str = "created",
        descending: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> list[t.AdapterVersion]:
        """Versions matching every given filter (tags are ANDed), newest first by default."""
        filters = queries.SearchFilters(
            base_model=base_model, tags=dict(tags or {}), task_type=task_type, peft_type=peft_type,
            min_rank=min_rank, max_rank=max_rank, target_module=target_module, name_like=name_like,
            status=status, sort=sort, descending=descending, limit=limit, offset=offset,
        )
        return self.search_page(filters).items

    def lineage(self, ref: str) -> t.LineageGraph:
        """All ancestors and descendants of a version, as nodes and edges."""
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            return queries.lineage(session, row.id)

    def base_models(self) -> list[t.BaseModelInfo]:
        with transaction(self._sessions) as session:
            return queries.base_models(session)

    def versions_of(self, name: str) -> list[t.AdapterVersion]:
        """Every version of one adapter, oldest first."""
        with transaction(self._sessions) as session:
            rows = session.scalars(
                select(m.AdapterVersion).join(m.Adapter)
                .where(m.Adapter.name == check_slug(name)).order_by(m.AdapterVersion.version)
            ).all()
            return queries.describe(session, list(rows), self.store.root)

    # -- labels ---------------------------------------------------------------------------------

    def set_alias(self, ref: str, alias: str) -> t.AdapterVersion:
        """Point ``alias`` (e.g. ``production``) at the version ``ref`` names; moves it if it exists."""
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            catalog.set_alias(session, row, alias)
            session.flush()
            return queries.describe(session, [row], self.store.root)[0]

    def remove_alias(self, name: str, alias: str | None = None) -> None:
        """Remove an alias: ``remove_alias("tone@production")`` (or ``remove_alias("tone", "production")``)."""
        if alias is None:
            parsed = parse_ref(name)
            if parsed.alias is None:
                raise InvalidReference(f"{name!r} is not name@alias")
            name, alias = parsed.name or "", parsed.alias
        with transaction(self._sessions) as session:
            catalog.remove_alias(session, name, alias)

    def aliases(self, name: str | None = None) -> list[t.AliasInfo]:
        """Every alias and the version it points at (only ``name``'s when given)."""
        with transaction(self._sessions) as session:
            return queries.aliases(session, check_slug(name) if name is not None else None)

    def tag(self, ref: str, tags: dict[str, str]) -> t.AdapterVersion:
        """Set tags (key -> value) on a version, overwriting existing values of the same keys."""
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            catalog.set_tags(session, row, tags)
            return queries.describe(session, [row], self.store.root)[0]

    def untag(self, ref: str, keys: list[str]) -> t.AdapterVersion:
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            catalog.remove_tags(session, row, keys)
            return queries.describe(session, [row], self.store.root)[0]

    # -- jobs -----------------------------------------------------------------------------------

    def merge(
        self,
        sources: list[str],
        *,
        weights: list[float],
        method: str = "svd",
        name: str,
        density: float | None = None,
        svd_rank: int | None = None,
        svd_clamp: float | None = None,
        majority_sign_method: str = "total",
        seed: int | None = None,
        dtype: str | None = None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
        allow_cross_base: bool = False,
        validate: bool = False,
        publish_to: str | jobs.PublishTarget | None = None,
        idempotency_key: str | None = None,
        run_id: int | None = None,
    ) -> jobs.Job:
        """Merge catalog versions into a new version of ``name``; returns the job.

        ``validate`` chains a runtime validation job; ``publish_to`` (a Hub repo id) chains validation and
        then a publish job that runs only if every check passed.

        Every static check runs first, on stored metadata only, and reports every problem at once
        (:class:`IncompatibleAdapters`); nothing is queued unless all pass. On the embedded default the
        job runs in-process before this returns; with a broker, a worker runs it (``job.wait()``).
        """
        from registry.merge_rules import check_merge

        params = {"density": density, "svd_rank": svd_rank, "svd_clamp": svd_clamp,
                  "majority_sign_method": majority_sign_method, "seed": seed}
        with transaction(self._sessions) as session:
            rows = [catalog.resolve(session, parse_ref(ref)) for ref in sources]
            refs = [catalog.exact_ref(session, r) for r in rows]
            manifests = [catalog.manifest_of(session, r) for r in rows]
        check_merge(manifests, list(weights), method, {k: v for k, v in params.items() if v is not None},
                    allow_cross_base=allow_cross_base, labels=refs)
        if isinstance(publish_to, str):
            publish_to = self.publish_target(publish_to)
        if publish_to is not None:
            card_base_model(manifests[0].base_model_name_or_path, publish_to.base_model_id, f"the merge {name!r}")
        try:
            spec = jobs.MergeSpec(
                sources=[jobs.SourceRef(ref=ref, version_id=r.id, weights_sha256=r.weights_sha256,
                                        storage_path=r.storage_path) for ref, r in zip(refs, rows, strict=True)],
                weights=list(weights), method=method, params=jobs.MergeParams(**params, dtype=dtype), name=name,
                tags=dict(tags or {}), description=description, allow_cross_base=allow_cross_base,
                validate_after=validate or publish_to is not None,
                publish_to=publish_to,
            )
        except ValidationError as exc:
            raise _invalid("merge request", exc) from None
        return self.submit(spec, idempotency_key=idempotency_key, run_id=run_id)

    def validate(self, ref: str, *, idempotency_key: str | None = None, run_id: int | None = None) -> jobs.Job:
        """Queue a runtime validation of a version against its base model's real weights."""
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            exact = catalog.exact_ref(session, row)
        return self.submit(jobs.ValidateSpec(version_id=row.id, ref=exact), idempotency_key=idempotency_key,
                           run_id=run_id)

    def submit(
        self, spec: jobs.AnySpec, *, idempotency_key: str | None = None, parent_job_id: int | None = None,
        run_id: int | None = None,
    ) -> jobs.Job:
        """Write the job row (committed), then hand its id to the executor.

        With an ``idempotency_key`` already used, the first job is returned and nothing new is queued (a retry
        after a lost answer or an unreachable broker is safe). A broker that cannot be reached raises
        :class:`~registry.errors.BrokerUnavailable`: the job exists and the recovery sweep sends it later.
        """
        queue = jobs.DEFAULT_QUEUE[spec.kind]
        if queue == "gpu" and self.settings.gpu_queue_fallback:
            queue = "cpu"
        with transaction(self._sessions) as session:
            row, created = jobs.insert_job(
                session, spec, queue=queue, idempotency_key=idempotency_key, parent_job_id=parent_job_id,
                run_id=run_id,
            )
            job_id = row.id
        if created:
            self.executor.dispatch(job_id, queue)
        return self.job(job_id)

    def job(self, job_id: int) -> jobs.Job:
        with self._sessions() as session:
            row = session.get(m.Job, job_id)
            if row is None:
                raise RegistryError(f"no job {job_id}", hint="see `adreg jobs`")
            return jobs.job_from_row(session, row, self)

    def jobs(self, *, status: str | None = None, kind: str | None = None, parent_job_id: int | None = None,
             limit: int = 50) -> list[jobs.Job]:
        """Recent jobs, newest first (only the follow-ups of ``parent_job_id`` when given)."""
        if status is not None and status not in jobs.STATUSES:
            raise RegistryError(f"status must be one of {', '.join(jobs.STATUSES)}")
        with self._sessions() as session:
            query = select(m.Job).order_by(m.Job.id.desc()).limit(limit)
            if status:
                query = query.where(m.Job.status == status)
            if kind:
                query = query.where(m.Job.kind == kind)
            if parent_job_id is not None:
                query = query.where(m.Job.parent_job_id == parent_job_id)
            return [jobs.job_from_row(session, r, self) for r in session.scalars(query)]

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job, or ask a running one to stop; returns ``cancelled`` or ``cancelling``."""
        with transaction(self._sessions) as session:
            return jobs.request_cancel(session, job_id)

    def train(
        self,
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
        with transaction(self._sessions) as session:
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
                tags=dict(tags or {}), validate_after=validate,
            )
        except ValidationError as exc:
            raise _invalid("training request", exc) from None
        if lrs is not None and len(lrs) != len(names):
            raise RegistryError(f"lrs has {len(lrs)} values for {len(names)} adapter(s)")
        if active is not None and any(i < 0 or i >= len(names) for i in active):
            raise RegistryError(f"active indices must be in 0..{len(names) - 1}")
        if eval_rows is not None and eval_rows >= data_spec.rows:
            raise RegistryError(f"eval_rows={eval_rows} leaves no training rows: {data} has {data_spec.rows} row(s)")
        return self.submit(spec, idempotency_key=idempotency_key, run_id=run_id)

    def publish(
        self, ref: str, repo_id: str, *, branch: str = "main", private: bool = False, create_pr: bool = False,
        base_model_id: str | None = None, idempotency_key: str | None = None, run_id: int | None = None,
    ) -> jobs.Job:
        """Push a version to a Hub repository with a model card that records its base, lineage and evidence.

        The card's ``base_model`` is the version's base when that is a Hub id, else ``base_model_id`` (e.g. the
        Hub id a local base folder was downloaded from); with neither, it is refused before any job exists.
        Publishing the same version to the same repo and branch again is a no-op (the remote weights'
        sha256 is compared). The token comes from ``HF_TOKEN`` or ``huggingface_hub``'s login and is
        never stored.
        """
        target = self.publish_target(repo_id, branch=branch, private=private, create_pr=create_pr,
                                      base_model_id=base_model_id)
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            exact = catalog.exact_ref(session, row)
            base = session.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
            card_base_model(base.name if base else None, target.base_model_id, exact)
        return self.submit(jobs.PublishSpec(version_id=row.id, ref=exact, target=target),
                           idempotency_key=idempotency_key, run_id=run_id)

    @staticmethod
    def publish_target(repo_id: str, **options: object) -> jobs.PublishTarget:
        """A validated Hub target (``branch``, ``private``, ``create_pr``, ``base_model_id``) for ``publish_to=``."""
        try:
            return jobs.PublishTarget(repo_id=repo_id, **options)
        except ValidationError as exc:
            raise _invalid(f"Hub target {repo_id!r}", exc) from None

    def publications(self, ref: str) -> list[dict]:
        """Where a version has been published (repo, branch, commit, URL, time)."""
        with transaction(self._sessions) as session:
            row = catalog.resolve(session, parse_ref(ref))
            return [
                {"repo_id": p.repo_id, "branch": p.branch, "commit": p.commit_oid, "url": p.url, "pr_url": p.pr_url,
                 "published_at": p.published_at.isoformat()}
                for p in session.scalars(select(m.Publication).where(m.Publication.version_id == row.id)
                                         .order_by(m.Publication.id))
            ]

    # -- recipes, runs, schedules -------------------------------------------------------------

    def run_recipe(self, recipe: str | Path | dict, *, idempotency_key: str | None = None) -> RunInfo:
        """Check a recipe completely (references, data, merge rules), then start it as a chain of jobs.

        If its resolved inputs equal those of its last successful run, the run is recorded as
        ``skipped: inputs unchanged`` and nothing is produced.
        """
        from registry.recipes import load_recipe
        from registry.runs import advance_run, create_run

        parsed = load_recipe(recipe if isinstance(recipe, dict) else Path(recipe))
        with transaction(self._sessions) as session:
            row, _ = create_run(session, parsed, idempotency_key=idempotency_key)
            run_id = row.id
        advance_run(self, run_id)
        return self.run(run_id)

    def run(self, run_id: int) -> RunInfo:
        from registry.runs import run_info

        with self._sessions() as session:
            row = session.get(m.Run, run_id)
            if row is None:
                raise RegistryError(f"no run {run_id}")
            return run_info(session, row)

    def runs(self, *, limit: int = 50) -> list[RunInfo]:
        from registry.runs import run_info

        with self._sessions() as session:
            return [run_info(session, r) for r in session.scalars(select(m.Run).order_by(m.Run.id.desc()).limit(limit))]

    def add_schedule(self, recipe: str | Path | dict, *, name: str | None = None, cron: str | None = None,
                     tz: str = "UTC", catch_up: str = "latest", on_alias: str | None = None,
                     now: datetime | None = None) -> dict:
        """Fire a recipe on a cron expression in a time zone and/or when an alias moves (``name@alias``)."""
        from registry.recipes import load_recipe
        from registry.schedules import add_schedule, schedule_info

        parsed = load_recipe(recipe if isinstance(recipe, dict) else Path(recipe))
        with transaction(self._sessions) as session:
            row = add_schedule(session, name or parsed.name, parsed, cron=cron, tz=tz, catch_up=catch_up,
                               on_alias=on_alias, now=now or m.utcnow())
            return schedule_info(row)

    def schedules(self) -> list[dict]:
        from registry.schedules import schedule_info

        with self._sessions() as session:
            return [schedule_info(r) for r in session.scalars(select(m.Schedule).order_by(m.Schedule.name))]

    def _schedule(self, session, name: str) -> m.Schedule:  # type: ignore[no-untyped-def]
        row = session.scalars(select(m.Schedule).where(m.Schedule.name == name)).first()
        if row is None:
            raise RegistryError(f"no schedule named {name!r}", hint="see `adreg schedule list`")
        return row

    def set_schedule_enabled(self, name: str, enabled: bool, *, now: datetime | None = None) -> dict:
        """Pause or resume; resuming recomputes the next fire from now (missed fires follow catch-up)."""
        from registry.schedules import next_fire, schedule_info

        with transaction(self._sessions) as session:
            row = self._schedule(session, name)
            row.enabled = enabled
            if enabled and row.cron:
                row.next_fire_at = next_fire(row.cron, row.timezone, now or m.utcnow())
            return schedule_info(row)

    def remove_schedule(self, name: str) -> None:
        with transaction(self._sessions) as session:
            session.delete(self._schedule(session, name))

    def run_schedule_now(self, name: str) -> RunInfo:
        with self._sessions() as session:
            recipe = dict(self._schedule(session, name).recipe)
        return self.run_recipe(recipe)

    def tick(self, now: datetime | None = None) -> list[int]:
        """Start the runs that schedules and alias triggers are due for (see ``registry.schedules``)."""
        from registry.schedules import tick

        return tick(self, now)
