"""Recipe runs and schedules as operations on a :class:`~registry.service.Service`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select

from registry import models as m
from registry.errors import RegistryError
from registry.queries import check_page
from registry.recipes import load_recipe
from registry.runs import RunInfo, advance_run, create_run, run_info
from registry.schedules import add_schedule as insert_schedule
from registry.schedules import next_fire, schedule_info
from registry.schedules import tick as tick_schedules
from registry.service import Service


def run_recipe(svc: Service, recipe: str | Path | dict, *, idempotency_key: str | None = None) -> RunInfo:
    """Check a recipe completely (references, data, merge rules), then start it as a chain of jobs.

    If its resolved inputs equal those of its last successful run, the run is recorded as
    ``skipped: inputs unchanged`` and nothing is produced.
    """

    parsed = load_recipe(recipe if isinstance(recipe, dict) else Path(recipe))
    with svc.transaction() as session:
        row, _ = create_run(session, parsed, idempotency_key=idempotency_key)
        run_id = row.id
    advance_run(svc, run_id)
    return run(svc, run_id)


def run(svc: Service, run_id: int) -> RunInfo:

    with svc.sessions() as session:
        row = session.get(m.Run, run_id)
        if row is None:
            raise RegistryError(f"no run {run_id}")
        return run_info(session, row)


def runs(svc: Service, *, limit: int = 50) -> list[RunInfo]:
    """Recent runs, newest first."""
    check_page(limit)

    with svc.sessions() as session:
        return [run_info(session, r) for r in session.scalars(select(m.Run).order_by(m.Run.id.desc()).limit(limit))]


def add_schedule(svc: Service, recipe: str | Path | dict, *, name: str | None = None, cron: str | None = None,
                 tz: str = "UTC", catch_up: str = "latest", on_alias: str | None = None,
                 now: datetime | None = None) -> dict:
    """Fire a recipe on a cron expression in a time zone and/or when an alias moves (``name@alias``)."""

    parsed = load_recipe(recipe if isinstance(recipe, dict) else Path(recipe))
    with svc.transaction() as session:
        row = insert_schedule(session, name or parsed.name, parsed, cron=cron, tz=tz, catch_up=catch_up,
                           on_alias=on_alias, now=now or m.utcnow())
        return schedule_info(row)


def schedules(svc: Service) -> list[dict]:

    with svc.sessions() as session:
        return [schedule_info(r) for r in session.scalars(select(m.Schedule).order_by(m.Schedule.name))]


def _schedule(session, name: str) -> m.Schedule:  # type: ignore[no-untyped-def]
    row = session.scalars(select(m.Schedule).where(m.Schedule.name == name)).first()
    if row is None:
        raise RegistryError(f"no schedule named {name!r}", hint="see `adreg schedule list`")
    return row


def set_schedule_enabled(svc: Service, name: str, enabled: bool, *, now: datetime | None = None) -> dict:
    """Pause or resume; resuming recomputes the next fire from now (missed fires follow catch-up)."""

    with svc.transaction() as session:
        row = _schedule(session, name)
        row.enabled = enabled
        if enabled and row.cron:
            row.next_fire_at = next_fire(row.cron, row.timezone, now or m.utcnow())
        return schedule_info(row)


def remove_schedule(svc: Service, name: str) -> None:
    with svc.transaction() as session:
        session.delete(_schedule(session, name))


def run_schedule_now(svc: Service, name: str) -> RunInfo:
    with svc.sessions() as session:
        recipe = dict(_schedule(session, name).recipe)
    return run_recipe(svc, recipe)


def tick(svc: Service, now: datetime | None = None) -> list[int]:
    """Start the runs that schedules and alias triggers are due for (see ``registry.schedules``)."""

    return tick_schedules(svc, now)
