"""Schedules (cron in a time zone, with a catch-up policy) and alias triggers, turned into runs by one tick.

``tick(registry, now)`` is the only entry point: Celery beat calls it as a task every N seconds, and
``adreg scheduler`` calls it in a loop on the embedded default. Every fire becomes a run whose
idempotency key is ``schedule:<id>:<fire time>`` (or ``event:<id>:schedule:<id>``), unique in the catalog,
and due rows are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL: two ticks at once, a
slow tick or a restart never run a fire twice. Time is a parameter, never read from a clock inside.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from registry import models as m
from registry.errors import RegistryError
from registry.recipes import InvalidRecipe, Recipe
from registry.refs import check_slug, parse_ref
from registry.runs import advance_run, create_run

if TYPE_CHECKING:
    from registry.service import Service

log = logging.getLogger(__name__)

CATCH_UP = ("latest", "all", "none")
NONE_GRACE = timedelta(minutes=2)  # catch_up=none: a fire this late still counts as on time
MAX_CATCH_UP_RUNS = 24  # catch_up=all: at most the 24 most recent missed fires run, in one tick
MAX_CRON_CHARS = 200

# The five-field cron grammar (minute hour day-of-month month day-of-week), as in crontab(5): each field a
# comma-separated list of '*', N or N-M, each optionally '/STEP'; months also jan..dec, weekdays sun..sat
# (0 and 7 are Sunday). Nothing else: no seconds or year field, no @daily, L, W, # or ?.
_NUMBER = r"[0-9]{1,2}"
_MONTH = r"(?:[0-9]{1,2}|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_WEEKDAY = r"(?:[0-9]{1,2}|sun|mon|tue|wed|thu|fri|sat)"


def _field(value: str) -> re.Pattern[str]:
    item = rf"(?:\*|{value}(?:-{value})?)(?:/[0-9]{{1,2}})?"
    return re.compile(rf"{item}(?:,{item})*", re.IGNORECASE | re.ASCII)


_FIELDS = (("minute", _field(_NUMBER), 0, 59), ("hour", _field(_NUMBER), 0, 23),
           ("day of month", _field(_NUMBER), 1, 31), ("month", _field(_MONTH), 1, 12),
           ("day of week", _field(_WEEKDAY), 0, 7))
CRON_HELP = "five fields: minute hour day-of-month month day-of-week, e.g. '0 3 * * 1'"


class InvalidCron(RegistryError):
    """A cron expression outside the five-field grammar, or one that never fires."""


def check_cron(cron: str, tz: str = "UTC", now: datetime | None = None) -> str:
    """Return ``cron`` if it is a five-field expression (see ``_FIELDS``) that fires at least once, else raise."""
    if not isinstance(cron, str) or len(cron) > MAX_CRON_CHARS:
        raise InvalidCron(f"invalid cron expression {cron!r:.60} ({CRON_HELP})")
    fields = cron.split()
    if len(fields) != 5:
        raise InvalidCron(f"invalid cron expression {cron!r}: {len(fields)} field(s), cron takes exactly five "
                          f"({CRON_HELP})")
    for text, (name, pattern, low, high) in zip(fields, _FIELDS, strict=True):
        numbers = [int(n) for n in re.findall(r"[0-9]+", re.sub(r"/[0-9]+", "", text))]
        if not pattern.fullmatch(text) or any(not low <= n <= high for n in numbers) \
                or any(int(step) == 0 for step in re.findall(r"/([0-9]+)", text)):
            raise InvalidCron(f"invalid cron expression {cron!r}: the {name} field {text!r} is not "
                              f"'*', a number from {low} to {high}, a range or a list, with an optional /step "
                              f"({CRON_HELP})")
    if not croniter.is_valid(cron):
        raise InvalidCron(f"invalid cron expression {cron!r} ({CRON_HELP})")
    try:
        next_fire(cron, tz, now or datetime.now(timezone.utc))
    except (CroniterError, ValueError, OverflowError):
        raise InvalidCron(f"cron expression {cron!r} never fires (no such date, e.g. February 30)") from None
    return cron


def check_schedule(cron: str | None, tz: str, catch_up: str, on_alias: str | None) -> None:
    if cron is None and on_alias is None:
        raise RegistryError("a schedule needs --cron, --on-alias, or both")
    if not isinstance(tz, str) or len(tz) > 100:
        raise RegistryError(f"unknown time zone {tz!r:.60} (use an IANA name such as Europe/Paris)")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise RegistryError(f"unknown time zone {tz!r} (use an IANA name such as Europe/Paris)") from None
    if cron is not None:
        check_cron(cron, tz)
    if catch_up not in CATCH_UP:
        raise RegistryError(f"catch-up policy must be one of {', '.join(CATCH_UP)}")
    if on_alias is not None:
        ref = parse_ref(on_alias)
        if ref.alias is None:
            raise RegistryError(f"--on-alias takes name@alias (got {on_alias!r})")


def recent_fires(cron: str, tz: str, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """The last ``limit`` cron fire times in ``(after, until]``, computed in ``tz`` (DST-correct), in UTC and in
    order. Walks back from ``until``, so the work is bounded by ``limit`` however long the outage was."""
    it = croniter(cron, (until + timedelta(microseconds=1)).astimezone(ZoneInfo(tz)))
    out: list[datetime] = []
    while len(out) < limit:
        fire = it.get_prev(datetime)
        if fire <= after:
            break
        out.append(fire.astimezone(timezone.utc))
    return out[::-1]


def next_fire(cron: str, tz: str, after: datetime) -> datetime:
    return croniter(cron, after.astimezone(ZoneInfo(tz))).get_next(datetime).astimezone(timezone.utc)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def due_fires(schedule: m.Schedule, now: datetime) -> list[datetime]:
    """The fires of ``schedule`` up to ``now`` that its catch-up policy says to run: ``all`` the missed ones (at
    most the ``MAX_CATCH_UP_RUNS`` most recent), ``latest`` the most recent, ``none`` the most recent if it is
    at most ``NONE_GRACE`` late."""
    after = _aware(schedule.last_fire_at or schedule.created_at)
    limit = MAX_CATCH_UP_RUNS if schedule.catch_up == "all" else 1
    fires = recent_fires(schedule.cron or "", schedule.timezone, after, now, limit)
    if schedule.catch_up == "none":
        return [f for f in fires if now - f <= NONE_GRACE]
    return fires


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


def tick(svc: Service, now: datetime | None = None) -> list[int]:
    """Turn due cron fires and unprocessed alias events into runs; return the ids of runs started."""
    now = _aware(now or m.utcnow())
    started: list[int] = []
    with svc.transaction() as s:
        due = _claim(s, select(m.Schedule).where(
            m.Schedule.enabled.is_(True), m.Schedule.cron.is_not(None), m.Schedule.next_fire_at <= now,
        ).order_by(m.Schedule.id))
        for schedule in due:
            try:
                fires = due_fires(schedule, now)
                following = next_fire(schedule.cron or "", schedule.timezone, now)
            except (CroniterError, ValueError, KeyError, OverflowError) as exc:
                # Stored before the cron checks of check_cron (or a time zone gone from the system): pause it
                # rather than fail every tick.
                log.error("schedule %s (%r) cannot be computed and is paused: %s", schedule.name, schedule.cron, exc)
                schedule.enabled, schedule.next_fire_at = False, None
                continue
            for fire in fires:
                run_id = _start(s, schedule, "cron", f"schedule:{schedule.id}:{fire.isoformat()}", fire)
                if run_id is not None:
                    started.append(run_id)
            schedule.last_fire_at = now
            schedule.next_fire_at = following
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
        advance_run(svc, run_id)
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
