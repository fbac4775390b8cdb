"""Schedules (cron in a time zone, with a catch-up policy) and alias triggers, turned into runs by one tick.

``tick(registry, now)`` is the only entry point: Celery beat calls it as a task every N seconds, and
``adreg scheduler`` calls it in a loop on the embedded default. Every fire becomes a run whose
idempotency key is ``schedule:<id>:<fire time>`` (or ``event:<id>:schedule:<id>``), unique in the catalog,
and due rows are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL: two ticks at once, a
slow tick or a restart never run a fire twice. Time is a parameter, never read from a clock inside.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import models as m
from registry.db import transaction
from registry.errors import RegistryError
from registry.recipes import InvalidRecipe, Recipe
from registry.refs import check_slug, parse_ref
from registry.runs import advance_run, create_run

if TYPE_CHECKING:
    from registry.sdk import Registry

CATCH_UP = ("latest", "all", "none")
NONE_GRACE = timedelta(minutes=2)  # catch_up=none: a fire this late still counts as on time
MAX_FIRES = 1000


def check_schedule(cron: str | None, tz: str, catch_up: str, on_alias: str | None) -> None:
    if cron is None and on_alias is None:
        raise RegistryError("a schedule needs --cron, --on-alias, or both")
    if cron is not None and not croniter.is_valid(cron):
        raise RegistryError(f"invalid cron expression {cron!r} (five fields: minute hour day month weekday)")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RegistryError(f"unknown time zone {tz!r} (use an IANA name such as Europe/Paris)") from None
    if catch_up not in CATCH_UP:
        raise RegistryError(f"catch-up policy must be one of {', '.join(CATCH_UP)}")
    if on_alias is not None:
        ref = parse_ref(on_alias)
        if ref.alias is None:
            raise RegistryError(f"--on-alias takes name@alias (got {on_alias!r})")


def fires_between(cron: str, tz: str, after: datetime, until: datetime) -> list[datetime]:
    """Cron fire times in ``(after, until]``, computed in ``tz`` (DST-correct), returned in UTC."""
    it = croniter(cron, after.astimezone(ZoneInfo(tz)))
    out: list[datetime] = []
    while len(out) < MAX_FIRES:
        fire = it.get_next(datetime)
        if fire > until:
            break
        out.append(fire.astimezone(timezone.utc))
    return out


def next_fire(cron: str, tz: str, after: datetime) -> datetime:
    return croniter(cron, after.astimezone(ZoneInfo(tz))).get_next(datetime).astimezone(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def due_fires(schedule: m.Schedule, now: datetime) -> list[datetime]:
    """The fires of ``schedule`` up to ``now`` that its catch-up policy says to run."""
    after = _aware(schedule.last_fire_at or schedule.created_at)
    fires = fires_between(schedule.cron or "", schedule.timezone, after, now)
    if schedule.catch_up == "all":
        return fires
    if schedule.catch_up == "latest":
        return fires[-1:]
    return [f for f in fires[-1:] if now - f <= NONE_GRACE]


def _claim(session: Session, query):  # type: ignore[no-untyped-def]
    # SKIP LOCKED on PostgreSQL; SQLAlchemy renders no FOR UPDATE on SQLite, whose writers are serial.
    return session.scalars(query.with_for_update(skip_locked=True)).all()


def _start(session: Session, schedule: m.Schedule, trigger: str, key: str, fire: datetime | None) -> int | None:
    recipe = Recipe.model_validate(schedule.recipe)
    try:
        with session.begin_nested():
            run, created = create_run(session, recipe, trigger=trigger, schedule_id=schedule.id, fire_time=fire,
                                      idempotency_key=key)
    except IntegrityError:
        return None  # another tick created this fire's run first
    except InvalidRecipe as exc:
        # A recipe that no longer resolves (e.g. an alias removed) is recorded as a failed run, once.
        with session.begin_nested():
            run = m.Run(recipe_name=recipe.name, recipe=schedule.recipe, trigger=trigger, schedule_id=schedule.id,
                        fire_time=fire, idempotency_key=key, inputs={}, inputs_key="-", outputs={}, step_jobs={},
                        current_step=0, status="failed", message=str(exc), created_at=m.utcnow(),
                        finished_at=m.utcnow())
            session.add(run)
        return None
    return run.id if created and run.status == "running" else None


def tick(reg: Registry, now: datetime | None = None) -> list[int]:
    """Turn due cron fires and unprocessed alias events into runs; return the ids of runs started."""
    now = _aware(now or m.utcnow())
    started: list[int] = []
    with transaction(reg._sessions) as s:
        due = _claim(s, select(m.Schedule).where(
            m.Schedule.enabled.is_(True), m.Schedule.cron.is_not(None), m.Schedule.next_fire_at <= now,
        ).order_by(m.Schedule.id))
        for schedule in due:
            for fire in due_fires(schedule, now):
                run_id = _start(s, schedule, "cron", f"schedule:{schedule.id}:{fire.isoformat()}", fire)
                if run_id is not None:
                    started.append(run_id)
            schedule.last_fire_at = now
            schedule.next_fire_at = next_fire(schedule.cron or "", schedule.timezone, now)
        events = _claim(s, select(m.Event).where(m.Event.processed_at.is_(None)).order_by(m.Event.id))
        for event in events:
            listeners = s.scalars(select(m.Schedule).where(
                m.Schedule.enabled.is_(True), m.Schedule.on_alias == event.subject)).all()
            for schedule in listeners:
                run_id = _start(s, schedule, "alias_moved", f"event:{event.id}:schedule:{schedule.id}", None)
                if run_id is not None:
                    started.append(run_id)
            event.processed_at = now
    for run_id in started:
        advance_run(reg, run_id)
    return started


def add_schedule(session: Session, name: str, recipe: Recipe, *, cron: str | None, tz: str, catch_up: str,
                 on_alias: str | None, now: datetime) -> m.Schedule:
    check_slug(name, "schedule name")
    check_schedule(cron, tz, catch_up, on_alias)
    if session.scalars(select(m.Schedule).where(m.Schedule.name == name)).first() is not None:
        raise RegistryError(f"a schedule named {name!r} exists", hint="remove it first with `adreg schedule rm`")
    row = m.Schedule(name=name, recipe=recipe.model_dump(by_alias=True, exclude_none=True), cron=cron, timezone=tz,
                     enabled=True, catch_up=catch_up, on_alias=on_alias, created_at=now,
                     next_fire_at=next_fire(cron, tz, now) if cron else None)
    session.add(row)
    session.flush()
    return row


def schedule_info(row: m.Schedule) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "recipe": row.recipe.get("name"), "cron": row.cron,
            "timezone": row.timezone, "enabled": row.enabled, "catch_up": row.catch_up, "on_alias": row.on_alias,
            "last_fire_at": row.last_fire_at.isoformat() if row.last_fire_at else None,
            "next_fire_at": row.next_fire_at.isoformat() if row.next_fire_at else None}
