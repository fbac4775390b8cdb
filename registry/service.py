"""The service: what one process needs to act on one catalog, built once and handed to every layer above.

Settings, the engine and its session factory, the artifact store, the executor and the acting user. The
embedded :class:`~registry.sdk.Registry`, the HTTP API, the CLI, runs, schedules and the workers all take a
:class:`Service`; none of them takes the user facade.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from registry.auth import Principal, os_user
from registry.config import Settings
from registry.db import ensure_schema, make_engine, session_factory, transaction
from registry.executors import CeleryExecutor, LocalExecutor
from registry.store import ArtifactStore

ProgressListener = Callable[[int, float, "str | None"], None]
#: Runs one job in this process: ``(service, job_id, on_progress) -> final status`` (``workers.runners.run_job``).
LocalRunner = Callable[["Service", int, "ProgressListener | None"], str]


class Executor(Protocol):
    name: str

    def dispatch(self, job_id: int, queue: str) -> None: ...


class Service:
    """Settings + engine/sessions + artifact store + executor + actor, for one catalog in one process.

    ``local_runner`` runs jobs in-process when no broker is configured (the embedded default); without one,
    a submission on a broker-less service is refused. ``actor`` is the user recorded as ``created_by`` and in
    the audit log (the OS user unless given).
    """

    def __init__(
        self, settings: Settings, *, local_runner: LocalRunner | None = None,
        on_progress: ProgressListener | None = None, actor: str | None = None, engine: Engine | None = None,
    ) -> None:
        self.settings = settings
        self.owns_engine = engine is None
        self.engine = engine if engine is not None else make_engine(settings.database_url)
        if self.owns_engine:
            ensure_schema(self.engine)
        self.sessions: sessionmaker[Session] = session_factory(self.engine)
        self.store = ArtifactStore(settings.artifact_dir)
        self.local_runner = local_runner
        self.on_progress = on_progress
        self.actor = actor or os_user()
        #: Whose permissions access operations check (``None``: a trusted local caller, e.g. the embedded CLI).
        self.principal: Principal | None = None
        self._executor: Executor | None = None

    @classmethod
    def open(cls, database_url: str | None = None, *, home: str | Path | None = None,
             **options: object) -> Service:
        """A service over the catalog ``database_url`` (else ``ADREG_DATABASE_URL``, else the embedded SQLite)."""
        return cls(Settings.from_env(database_url, home), **options)  # type: ignore[arg-type]

    def acting_as(self, principal: Principal) -> Service:
        """The same catalog, engine and executor, acting as ``principal`` (one per HTTP request)."""
        other = Service(self.settings, local_runner=self.local_runner, on_progress=self.on_progress,
                        actor=principal.name, engine=self.engine)
        other.principal = principal
        if isinstance(self._executor, CeleryExecutor):  # one broker connection pool per process
            other._executor = self._executor
        return other

    @property
    def executor(self) -> Executor:
        """Celery when ``ADREG_BROKER_URL`` is set, else the in-process local executor."""
        if self._executor is None:
            if self.settings.broker_url:
                self._executor = CeleryExecutor(self.settings.broker_url)
            else:
                runner = self.local_runner
                self._executor = LocalExecutor(
                    None if runner is None else lambda job_id: runner(self, job_id, self.on_progress))
        return self._executor

    def transaction(self):  # type: ignore[no-untyped-def]
        """A session in a transaction committed on success (``with svc.transaction() as session``)."""
        return transaction(self.sessions)

    def close(self) -> None:
        if self.owns_engine:
            self.engine.dispose()
