"""The embedded ``Registry``: the user facade over a :class:`~registry.service.Service` in this process.

Every method calls the one service operation of :mod:`registry.operations` that the HTTP API calls too, so a
behaviour is written once; :class:`~registry.remote.RemoteRegistry` offers the same methods over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from registry import catalog, jobs, queries
from registry import types as t
from registry.config import Settings
from registry.db import make_engine, upgrade
from registry.errors import RegistryError
from registry.login import server_url
from registry.operations import access, automation, diffs, lifecycle, submit, versions
from registry.runs import RunInfo
from registry.service import Service


class Registry:
    """A catalog of LoRA adapters.

    ``Registry()`` opens the embedded SQLite catalog under ``$ADREG_HOME`` (default ``~/.adreg``),
    creating it on first use; ``Registry("postgresql+psycopg://host/db")`` (or ``ADREG_DATABASE_URL``)
    opens a shared one, which must have been created with ``adreg init``. ``Registry("https://host")`` (or
    ``ADREG_URL``) talks to an ``adreg serve`` server instead (a :class:`~registry.remote.RemoteRegistry`).
    """

    #: Facades of catalogs served elsewhere, by URL scheme (:mod:`registry.remote` adds http and https).
    transports: ClassVar[dict[str, type[Registry]]] = {}

    def __new__(cls, database_url: str | None = None, **_options: object):  # type: ignore[no-untyped-def]
        target = server_url(database_url) if cls is Registry else None
        if target is not None:
            scheme = target.partition(":")[0]
            if scheme not in Registry.transports:
                raise RegistryError(f"no client for {scheme}:// URLs (import registry.remote)")
            return object.__new__(Registry.transports[scheme])  # its __init__ runs next, with these arguments
        return object.__new__(cls)

    def __init__(
        self, database_url: str | None = None, *, home: str | Path | None = None,
        on_progress: Callable[[int, float, str | None], None] | None = None,
    ) -> None:
        """``on_progress(job_id, fraction, message)`` hears the progress of jobs run in this process (the
        embedded default's local executor); jobs on Celery workers report through ``Job.refresh()``."""
        from workers.runners import run_job

        self.service = Service(Settings.from_env(database_url, home), local_runner=run_job, on_progress=on_progress)
        self.settings = self.service.settings
        self.store = self.service.store
        if self.settings.is_sqlite and not self.settings.broker_url:  # embedded: no worker sweeps for us
            with self.service.transaction() as session:
                jobs.fail_orphaned_local_jobs(session, self.store.root, self.settings.job_lease_seconds)

    @property
    def engine(self):  # type: ignore[no-untyped-def]
        return self.service.engine

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
        self.service.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _bound(self, job: jobs.Job) -> jobs.Job:
        """A job handle whose ``refresh()``, ``wait()`` and ``result`` go through this facade."""
        return job.bind(self)

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
        compatible_with: str | None = None,
        status: str | None = "live",
        query: str | None = None,
        where: str | None = None,
        sort: str | None = None,
        descending: bool = True,
        limit: int = 50,
        offset: int = 0,
    ) -> list[t.AdapterVersion]:
        """Versions matching every given filter (tags are ANDed), newest first by default.

        ``status`` is ``live`` (ready and deprecated: the default), ``ready``, ``deprecated``, ``deleted`` or
        ``any``; deleted versions are listed only when asked for.

        ``query`` is a full-text search over names, descriptions and tags (best match first unless ``sort`` is
        given); ``where`` filters on metrics (``"eval_loss<2.5 and accuracy>=0.9"``); ``sort`` may be
        ``metric:NAME``.
        ``compatible_with`` (a base's short name, name or folder) keeps the versions with evidence that they fit that
        base (exact, shape or validated), whatever base they were registered against.
        """
        filters = queries.SearchFilters(
            base_model=base_model, tags=dict(tags or {}), task_type=task_type, peft_type=peft_type,
            min_rank=min_rank, max_rank=max_rank, target_module=target_module, name_like=name_like,
            compatible_with=compatible_with,
            status=status, query=query, where=where, sort=sort, descending=descending, limit=limit, offset=offset,
        )
        return self.search_page(filters).items

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
        return versions.register(self.service, source, name=name, tags=tags, base=base, base_path=base_path,
            revision=revision, description=description, parents=parents)

    def get(self, ref: str) -> t.AdapterVersion:
        """The version ``ref`` names: ``name`` (latest), ``name:3`` or ``name@alias``."""
        return versions.get(self.service, ref)

    def search_page(self, filters: queries.SearchFilters) -> t.SearchPage:
        return versions.search_page(self.service, filters)

    def lineage(self, ref: str) -> t.LineageGraph:
        """All ancestors and descendants of a version, as nodes and edges."""
        return versions.lineage(self.service, ref)

    def base_models(self) -> list[t.BaseModelInfo]:
        return versions.base_models(self.service)

    def versions_of(self, name: str, *, include_deleted: bool = False) -> list[t.AdapterVersion]:
        """Every version of one adapter, oldest first; deleted ones (tombstones) only with ``include_deleted``."""
        return versions.versions_of(self.service, name, include_deleted=include_deleted)

    def set_alias(self, ref: str, alias: str, *, force: bool = False,
                  protect: bool | None = None) -> t.AdapterVersion:
        """Point ``alias`` (e.g. ``production``) at the version ``ref`` names; moves it if it exists.

        A deprecated or deleted version is refused unless ``force``. ``protect=True`` / ``False`` protects or
        unprotects the alias (admins only); a protected alias is moved or removed only by an admin (or a recipe's
        promote step whose gates passed), others get :class:`~registry.errors.ProtectedAlias`.
        """
        return versions.set_alias(self.service, ref, alias, force=force, protect=protect)

    def remove_alias(self, name: str, alias: str | None = None) -> None:
        """Remove an alias: ``remove_alias("tone@production")`` (or ``remove_alias("tone", "production")``)."""
        versions.remove_alias(self.service, name, alias)

    def aliases(self, name: str | None = None) -> list[t.AliasInfo]:
        """Every alias and the version it points at (only ``name``'s when given)."""
        return versions.aliases(self.service, name)

    def tag(self, ref: str, tags: dict[str, str]) -> t.AdapterVersion:
        """Set tags (key -> value) on a version, overwriting existing values of the same keys."""
        return versions.tag(self.service, ref, tags)

    def untag(self, ref: str, keys: list[str]) -> t.AdapterVersion:
        return versions.untag(self.service, ref, keys)

    def merge(
        self,
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

        ``weights``: one per source. ``validate`` chains a runtime validation job: True always, False never, None
        (the default) when the parents have held-out data (``eval`` datasets, else a training's ``heldout``
        split), on which the validation measures how much of each parent's skill the merge keeps
        (``report["retention"]``).
        ``publish_to`` (a Hub repo id) chains validation and then a publish job that runs only if every check
        passed.

        ``learn_weights`` learns the weights first (LoraHub-style, docs/merge.md "Learned weights"):
        ``learn_budget`` Adam steps on the mixture coefficients, minimising the mean loss on ``learn_examples``
        rows of each source's held-out data plus an L1 term, from ``weights`` (default 1/n each), the rows drawn
        with ``seed`` (default 0). ``learn_objective="worst"`` minimises instead a smooth maximum of the sources'
        normalised losses ``(L_i - P_i) / (B_i - P_i)`` (B_i the base's, P_i source i's alone): the worst-off
        source first. The learned weights are merged by ``method`` and recorded on the lineage
        edges; the job's ``report["learned_weights"]`` has the search's trace. Every source needs held-out data.

        Every static check runs first, on stored metadata only, and reports every problem at once
        (:class:`IncompatibleAdapters`); nothing is queued unless all pass. On the embedded default the
        job runs in-process before this returns; with a broker, a worker runs it (``job.wait()``).
        """
        return self._bound(submit.merge(self.service, sources, weights=weights, method=method, name=name,
            density=density, svd_rank=svd_rank, svd_clamp=svd_clamp, majority_sign_method=majority_sign_method,
            seed=seed, scale=scale, tsv_fraction=tsv_fraction, common_fraction=common_fraction,
            knots_inner=knots_inner, core_inner=core_inner,
            dtype=dtype, tags=tags, description=description, allow_cross_base=allow_cross_base,
            validate=validate, publish_to=publish_to, idempotency_key=idempotency_key, run_id=run_id,
            learn_weights=learn_weights, learn_examples=learn_examples, learn_budget=learn_budget,
            learn_objective=learn_objective))

    def validate(self, ref: str, *, idempotency_key: str | None = None, run_id: int | None = None) -> jobs.Job:
        """Queue a runtime validation of a version against its base model's real weights (for a merge whose parents
        have held-out data, with each parent's retention on it: ``report["retention"]``)."""
        return self._bound(submit.validate(self.service, ref, idempotency_key=idempotency_key, run_id=run_id))

    def submit(
        self, spec: jobs.AnySpec, *, idempotency_key: str | None = None, parent_job_id: int | None = None,
        run_id: int | None = None,
    ) -> jobs.Job:
        """Write the job row (committed), then hand its id to the executor.

        With an ``idempotency_key`` already used, the first job is returned and nothing new is queued (a retry
        after a lost answer or an unreachable broker is safe). A broker that cannot be reached raises
        :class:`~registry.errors.BrokerUnavailable`: the job exists and the recovery sweep sends it later.
        """
        return self._bound(submit.submit(self.service, spec, idempotency_key=idempotency_key,
            parent_job_id=parent_job_id, run_id=run_id))

    def job(self, job_id: int) -> jobs.Job:
        return self._bound(submit.job(self.service, job_id))

    def jobs(self, *, status: str | None = None, kind: str | None = None, parent_job_id: int | None = None,
             limit: int = 50) -> list[jobs.Job]:
        """Recent jobs, newest first (only the follow-ups of ``parent_job_id`` when given)."""
        return [self._bound(j) for j in submit.list_jobs(self.service, status=status, kind=kind,
            parent_job_id=parent_job_id, limit=limit)]

    def cancel(self, job_id: int) -> str:
        """Cancel a queued job, or ask a running one to stop; returns ``cancelled`` or ``cancelling``."""
        return submit.cancel(self.service, job_id)

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
        return self._bound(submit.train(self.service, source, data=data, steps=steps, lr=lr, name=name, new=new,
            base=base, joint_with=joint_with, active=active, lrs=lrs, batch_size=batch_size, grad_accum=grad_accum,
            max_length=max_length, eval_rows=eval_rows, seed=seed, checkpoint_every=checkpoint_every, bf16=bf16,
            gradient_checkpointing=gradient_checkpointing, tags=tags, validate=validate,
            idempotency_key=idempotency_key, run_id=run_id, task_type=task_type, reuse_name=reuse_name))

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
        return self._bound(submit.publish(self.service, ref, repo_id, branch=branch, private=private,
            create_pr=create_pr, base_model_id=base_model_id, idempotency_key=idempotency_key, run_id=run_id))

    @staticmethod
    def publish_target(repo_id: str, **options: object) -> jobs.PublishTarget:
        """A validated Hub target (``branch``, ``private``, ``create_pr``, ``base_model_id``) for ``publish_to=``."""
        return submit.publish_target(repo_id, **options)

    def publications(self, ref: str) -> list[dict]:
        """Where a version has been published (repo, branch, commit, URL, time)."""
        return versions.publications(self.service, ref)

    def run_recipe(self, recipe: str | Path | dict, *, idempotency_key: str | None = None) -> RunInfo:
        """Check a recipe completely (references, data, merge rules), then start it as a chain of jobs.

        If its resolved inputs equal those of its last successful run, the run is recorded as
        ``skipped: inputs unchanged`` and nothing is produced.
        """
        return automation.run_recipe(self.service, recipe, idempotency_key=idempotency_key)

    def run(self, run_id: int) -> RunInfo:
        return automation.run(self.service, run_id)

    def runs(self, *, limit: int = 50) -> list[RunInfo]:
        return automation.runs(self.service, limit=limit)

    def add_schedule(self, recipe: str | Path | dict, *, name: str | None = None, cron: str | None = None,
                     tz: str = "UTC", catch_up: str = "latest", on_alias: str | None = None,
                     now: datetime | None = None) -> dict:
        """Fire a recipe on a cron expression in a time zone and/or when an alias moves (``name@alias``)."""
        return automation.add_schedule(self.service, recipe, name=name, cron=cron, tz=tz, catch_up=catch_up,
            on_alias=on_alias, now=now)

    def schedules(self) -> list[dict]:
        return automation.schedules(self.service)

    def set_schedule_enabled(self, name: str, enabled: bool, *, now: datetime | None = None) -> dict:
        """Pause or resume; resuming recomputes the next fire from now (missed fires follow catch-up)."""
        return automation.set_schedule_enabled(self.service, name, enabled, now=now)

    def remove_schedule(self, name: str) -> None:
        automation.remove_schedule(self.service, name)

    def run_schedule_now(self, name: str) -> RunInfo:
        return automation.run_schedule_now(self.service, name)

    def tick(self, now: datetime | None = None) -> list[int]:
        """Start the runs that schedules and alias triggers are due for (see ``registry.schedules``)."""
        return automation.tick(self.service, now)

    def wait_job(self, job_id: int, *, timeout: float = 20.0) -> jobs.Job:
        """The job once it has finished, or as it stands after ``timeout`` seconds (at most 30)."""
        return self._bound(submit.wait_job(self.service, job_id, timeout=timeout))

    def download(self, ref: str, folder: str | Path) -> Path:
        """Copy version ``ref`` (adapter_config.json + adapter_model.safetensors) into the new folder ``folder``,
        verifying the weights' sha256; nothing is left at ``folder`` if anything fails."""
        return versions.download(self.service, ref, folder)

    def alias_history(self, ref: str) -> list[dict]:
        """Every move of ``name@alias``, oldest first: when, by whom, from which version to which."""
        return versions.alias_history(self.service, ref)

    def load(self, refs: str | list[str], *, base_model: Any = None, is_trainable: bool = False) -> Any:
        """Catalog versions as a ``peft.PeftModel``: on ``base_model``, or on the recorded base's weights.

        One reference (``"tone@production"``) gives a model with that adapter; a list loads each (the first with
        ``PeftModel.from_pretrained``, the rest with ``load_adapter``, never ``add_adapter``) under its adapter
        name, the first active (``model.set_adapter(name)`` switches). Adapters stay frozen unless
        ``is_trainable=True``. Check with ``model.get_model_status()``.
        """
        from registry.loading import load_versions

        chosen = [self.get(ref) for ref in ([refs] if isinstance(refs, str) else list(refs))]
        base = None
        if base_model is None and chosen:
            first = chosen[0]
            base = next((b for b in self.base_models()
                         if b.name == first.base_model and b.revision == first.base_revision), None)
        return load_versions(chosen, [self.version_folder(v) for v in chosen], base, base_model, is_trainable)

    def version_folder(self, version: t.AdapterVersion) -> Path:
        """A local PEFT folder holding ``version``'s files (embedded: the store's own)."""
        return Path(version.path)

    # -- access: users, tokens, grants, audit --------------------------------------------------------

    # -- lifecycle (issue 15) --
    def deprecate(self, ref: str, reason: str) -> t.AdapterVersion:
        """Mark a version (``name:N`` or ``name@alias``) deprecated, saying why. It stays usable by exact reference
        or alias but is no longer its name's latest; new aliases on it need ``force``; jobs using it warn."""
        return lifecycle.deprecate(self.service, ref, reason)

    def undeprecate(self, ref: str) -> t.AdapterVersion:
        """Make a deprecated version ready again."""
        return lifecycle.undeprecate(self.service, ref)

    def delete(self, ref: str, *, hard: bool = False, force: bool = False,
               reason: str | None = None) -> t.AdapterVersion:
        """Delete a version (``name:N`` or ``name@alias``): hidden from listings and references, kept in lineage
        as a tombstone (returned). ``hard`` purges it: :meth:`gc` then frees its files once nothing else uses them.
        Aliases pointing at it refuse the deletion unless ``force``, which removes them. Deleting a deleted version
        again (softly) is a :class:`~registry.errors.ConflictError`; registering its files again restores it."""
        return lifecycle.delete(self.service, ref, hard=hard, force=force, reason=reason)

    def gc(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Remove the files nothing refers to (admin): those of hard-deleted versions no other version or unfinished
        job shares, orphans, finished jobs' scratch. ``dry_run`` only lists them. Returns ``applied``, ``paths``,
        ``bytes``, ``blobs`` and ``versions`` (the purged versions whose files went)."""
        return lifecycle.gc(self.service, dry_run=dry_run)

    def rename(self, old: str, new: str) -> dict[str, Any]:
        """Rename an adapter. ``old`` (and ``old:N``, ``old@alias``) keeps resolving to it, answered under the new
        name, until an adapter is registered as ``old``. Returns ``old``, ``new``, ``versions`` and
        ``former_names``."""
        return lifecycle.rename(self.service, old, new)
    # -- end lifecycle --

    # -- text search (issue 15) --
    def describe(self, ref: str, description: str) -> t.AdapterVersion:
        """Set a description: the adapter's for a bare name (``"tone"``), one version's for ``"tone:3"`` or
        ``"tone@production"``; ``""`` clears it. Text search finds versions by both. Returns the version (the
        latest for a bare name)."""
        from registry.operations import describing

        return describing.describe(self.service, ref, description)
    # -- end text search --

    # -- metrics (issue 15) --
    def log_metric(self, ref: str, name: str, value: float, *, dataset: str | None = None) -> t.AdapterVersion:
        """Record metric ``name`` (``eval_loss``, ``rouge-l``: lowercase letters, digits, ``_-.``) of version ``ref``
        as the finite number ``value``, optionally on a ``dataset`` (``wiki``, ``glue/sst2``). Logging the same
        name and dataset again replaces the value. Returns the version, its ``metrics`` included; audited as
        ``metric.log``. Search with ``search(where="eval_loss<2.5")`` or ``search(sort="metric:eval_loss")``."""
        from registry.operations import metrics

        return metrics.log_metric(self.service, ref, name, value, dataset=dataset)

    def log_metrics(self, ref: str, values: dict[str, float], *, dataset: str | None = None) -> t.AdapterVersion:
        """Record several metrics of version ``ref`` at once (``{"eval_loss": 1.9, "accuracy": 0.81}``), all or
        none, in one transaction and one audit event; see :meth:`log_metric`."""
        from registry.operations import metrics

        return metrics.log_metrics(self.service, ref, values, dataset=dataset)
    # -- end metrics --

    # -- datasets (issue 17) --
    def register_dataset(self, path: str | Path, *, name: str, task_type: str | None = None) -> t.DatasetInfo:
        """Register the data file ``path`` (JSON Lines, JSON, text, CSV or parquet) as dataset ``name``, read with
        ``datasets`` and its columns checked for ``task_type`` when given (CAUSAL_LM: ``text``, ``prompt`` +
        ``completion`` or ``messages``; SEQ_CLS: ``text`` + ``label``; ...), pinned by its sha256 and stored in the
        artifact store. The same bytes under the same name return that version; other bytes are ``name:N+1``."""
        from registry.operations import datasets

        return datasets.register_dataset(self.service, str(path), name=name, task_type=task_type)

    def datasets(self, name: str | None = None) -> list[t.DatasetInfo]:
        """Every dataset version of the catalog (of ``name`` only, when given)."""
        from registry.operations import datasets

        return datasets.datasets(self.service, name)

    def dataset(self, ref: str) -> t.DatasetInfo:
        """One dataset version (``name``: its latest, ``name:N``), with the adapter versions linked to it."""
        from registry.operations import datasets

        return datasets.dataset(self.service, ref)

    def link_dataset(self, ref: str, dataset: str, *, role: str = "eval") -> t.AdapterVersion:
        """Link dataset ``dataset`` to version ``ref`` as ``eval`` (or ``train`` / ``heldout``) data."""
        from registry.operations import datasets

        return datasets.link_dataset(self.service, ref, dataset, role=role)

    def evaluate(self, ref: str, *, data: list[str] | None = None, max_length: int = 256, batch_size: int = 8,
                 max_rows: int | None = 1000, idempotency_key: str | None = None,
                 run_id: int | None = None) -> jobs.Job:
        """Evaluate version ``ref`` and its bare base on catalog datasets ``data`` (default: its linked eval sets):
        a job (GPU queue, CPU fallback) recording ``eval_loss``, ``perplexity``, ``token_accuracy`` (causal LMs) or
        ``eval_loss``, ``accuracy``, ``f1`` (SEQ_CLS, TOKEN_CLS) and the base's ``base_eval_loss``, ... as the
        version's metrics per dataset (``name:N``), with the job id."""
        return self._bound(submit.evaluate(self.service, ref, data=data, max_length=max_length, batch_size=batch_size,
                                           max_rows=max_rows, idempotency_key=idempotency_key, run_id=run_id))
    # -- end datasets --

    # -- diff (issue 15) --
    def diff(self, a: str, b: str) -> t.VersionDiff:
        """What differs from version ``a`` to version ``b`` (references: ``name``, ``name:3``, ``name@alias``).

        Base model and revision, every adapter_config.json key that differs, modules and target modules added (in
        B only) or removed (in A only), global and per-module rank / alpha changes, and for every module both have
        the distance of the deltas ``||dA - dB||_F / ||dB||_F`` (``dX = s B A`` with each module's scaling),
        most different first, computed from the LoRA factors without forming ``out x in`` matrices; DoRA
        magnitudes, lora_B biases and modules_to_save copies are compared value by value. See
        :class:`~registry.types.VersionDiff`.
        """
        return diffs.diff(self.service, a, b)
    # -- end diff --

    # -- named bases (issue 15) --
    def add_base(
        self, short_name: str, *, hub: str | None = None, revision: str | None = None, path: str | Path | None = None,
    ) -> t.BaseModelInfo:
        """Name a base model ``short_name``: the Hub model ``hub`` (at ``revision``, pinned to a commit sha; only its
        config.json is fetched) or the local model folder ``path``, its architecture and module shapes read once.

        The short name then works wherever a base is named (``search(base_model=...)``, ``compatible_with=``,
        ``register(base=...)``, ``base(...)``), and adapters registered against the same Hub id or a copy of the
        folder are recorded against the named base. Adding it again for the same base changes nothing; for another
        base it is refused (:class:`~registry.errors.ConflictError`). Over HTTP: admins only.
        """
        from registry.operations import bases  # (here, not at the top: keeps this feature inside its section)

        return bases.add_base(self.service, short_name, hub=hub, revision=revision, path=path)

    def base(self, name: str, *, limit: int = 100) -> t.BaseModelDetail:
        """A base model (short name, name, ``name@revision`` or folder) with its module shapes, the versions
        registered against it, how many versions fit it by level of evidence, and the newest ``limit`` of them."""
        from registry.operations import bases

        return bases.base(self.service, name, limit=limit)
    # -- end named bases --

    def whoami(self) -> dict[str, Any]:
        """Who this registry acts as (embedded: the OS user, with every right)."""
        return access.whoami(self.service)

    def add_user(self, name: str, *, admin: bool = False, groups: list[str] | None = None) -> dict[str, Any]:
        """Create a user of the server's API (admin only)."""
        return access.add_user(self.service, name, admin=admin, groups=groups)

    def users(self) -> list[dict[str, Any]]:
        return access.users(self.service)

    def create_token(self, user: str, *, scope: str = "write", expires: str | None = None,
                     label: str | None = None) -> dict[str, Any]:
        """A new API token (``scope`` read, write or admin; ``expires`` like ``30d``); its secret is shown once."""
        return access.create_token(self.service, user, scope=scope, expires=expires, label=label)

    def tokens(self, user: str | None = None) -> list[dict[str, Any]]:
        return access.tokens(self.service, user)

    def revoke_token(self, token_id: int) -> dict[str, Any]:
        return access.revoke_token(self.service, token_id)

    def add_grant(self, subject: str, pattern: str, permission: str = "write") -> dict[str, Any]:
        """Let a user (or ``group:NAME``) read, write or manage adapters whose names match ``pattern`` (``cx-*``)."""
        return access.add_grant(self.service, subject, pattern, permission)

    def remove_grant(self, subject: str, pattern: str) -> dict[str, Any]:
        return access.remove_grant(self.service, subject, pattern)

    def grants(self, subject: str | None = None) -> list[dict[str, Any]]:
        return access.grants(self.service, subject)

    def audit_events(self, *, name: str | None = None, since: str | None = None,
                     limit: int = 200) -> list[dict[str, Any]]:
        """Who did what, newest first: registrations, alias and tag changes, job submissions, access changes."""
        return access.audit_events(self.service, name=name, since=since, limit=limit)
