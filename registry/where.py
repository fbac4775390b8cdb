"""The metric filter grammar of ``Registry.search(where=...)`` and ``adreg list --where``: parsing only, no SQL.

::

    filter    := condition (("and" | ",") condition)*
    condition := metric op number
    metric    := NAME | NAME "[" DATASET "]"
    op        := "<" | "<=" | ">" | ">=" | "=" | "==" | "!="
    number    := a decimal or scientific float literal: 2.5, -1, .5, 1e-3 (finite; no nan, inf, no "_")

``NAME`` is a metric name (:data:`METRIC_NAME`: lowercase letters, digits, ``_``, ``-``, ``.``, starting with a
letter, at most 64 characters); ``DATASET`` a dataset name in square brackets, which no metric name can contain
(``eval_loss[wiki]<2.5``). Whitespace is allowed between tokens; ``and`` is case-insensitive. There is no ``or``,
no ``not`` and no parentheses: every condition must hold. A version lacking a metric matches no condition on it.

Examples: ``eval_loss<2.5``, ``eval_loss[wiki] <= 2.5 and accuracy >= 0.9``, ``rouge-l>0.3, val.loss<1e-2``.

A mistake raises :class:`InvalidWhere` naming the character position, with the text and a caret under it.
The sort key ``metric:NAME`` or ``metric:NAME[DATASET]`` uses the same metric syntax (:func:`parse_metric_sort`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidName, RegistryError

METRIC_NAME = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-/:]{0,254}")  # ':' for a catalog dataset's name:N
MAX_CONDITIONS = 8
SORT_PREFIX = "metric:"

#: Operator -> the Python (and SQLAlchemy column) comparison it means; ``=`` is written ``==`` once parsed.
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_OP = re.compile(r"<=|>=|==|!=|<|>|=")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_NOT_FINITE = re.compile(r"[+-]?(?:nan|inf(?:inity)?)(?![a-z0-9_.\-])", re.IGNORECASE)
_AND = re.compile(r"and(?![a-z0-9_.\-])", re.IGNORECASE)
_OR = re.compile(r"(?:or(?![a-z0-9_.\-])|\|\||\|)", re.IGNORECASE)
_NAME_CHAR = re.compile(r"[A-Za-z0-9_.\-]")
_WORD = re.compile(r"[A-Za-z0-9_.\-]+")


class InvalidWhere(RegistryError):
    """A ``where`` filter (or a ``metric:`` sort key) does not parse; ``position`` is the 0-based character."""

    position: int | None = None

    def __init__(self, message: str, *, text: str | None = None, position: int | None = None,
                 hint: str | None = None) -> None:
        if text is not None and position is not None:
            message = f"{message} (at character {position + 1})\n{_excerpt(text, position)}"
        super().__init__(message, hint=hint if hint is not None else _HINT)
        self.position = position


_HINT = 'write conditions like "eval_loss<2.5 and accuracy[glue]>=0.9" (operators < <= > >= = != ; "and" or ",")'


def _excerpt(text: str, position: int, width: int = 60) -> str:
    """Two lines: the text around ``position`` (at most ``width`` characters, ``...`` where cut) and a caret."""
    start = max(0, min(position - width // 2, len(text) - width))
    end = min(len(text), start + width)
    before = "..." if start > 0 else ""
    after = "..." if end < len(text) else ""
    shown = (before + text[start:end] + after).replace("\t", " ")
    return f"  {shown}\n  {' ' * (len(before) + position - start)}^"


@dataclass(frozen=True)
class Condition:
    """``metric[dataset] op value``; ``dataset`` is ``""`` for a metric logged without one."""

    metric: str
    op: str
    value: float
    dataset: str = ""

    def render(self) -> str:
        """The condition in the grammar (parsing it gives this condition back)."""
        return f"{render_metric(self.metric, self.dataset)}{self.op}{self.value!r}"

    def holds(self, value: float | None) -> bool:
        """Whether a version whose metric is ``value`` (None: not logged) matches."""
        return value is not None and bool(OPERATORS[self.op](value, self.value))


def render_metric(name: str, dataset: str = "") -> str:
    return f"{name}[{dataset}]" if dataset else name


def render(conditions: list[Condition]) -> str:
    """Conditions back as one filter text."""
    return " and ".join(c.render() for c in conditions)


def check_metric_name(name: str) -> str:
    """``name`` if it is a metric name, else :class:`~registry.errors.InvalidName`."""
    if not isinstance(name, str) or not METRIC_NAME.fullmatch(name):
        raise InvalidName(f"metric name {str(name)[:80]!r} is not allowed: use 1-64 lowercase letters, digits, "
                          "'_', '-' or '.', starting with a letter (e.g. eval_loss, rouge-l, val.loss)")
    return name


def check_dataset(dataset: str | None) -> str:
    """The stored form of a metric's dataset: ``""`` for None, else the name if valid (:data:`DATASET_NAME`)."""
    if dataset is None or dataset == "":
        return ""
    if not isinstance(dataset, str) or not DATASET_NAME.fullmatch(dataset):
        raise InvalidName(f"dataset name {str(dataset)[:80]!r} is not allowed: use 1-255 letters, digits, '_', '-', "
                          "'.', '/' or ':', starting with a letter or digit (e.g. wiki, glue/sst2, wiki:2)")
    return dataset


def check_value(name: str, value: Any) -> float:
    """A metric value as a finite float (a bool, a string, NaN or infinity is refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RegistryError(f"metric {name}: the value must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise RegistryError(f"metric {name}: the value must be finite, not {value!r}")
    return number


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, message: str, position: int | None = None) -> InvalidWhere:
        return InvalidWhere(f"where filter: {message}", text=self.text,
                            position=self.pos if position is None else position)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def match(self, pattern: re.Pattern[str]) -> str | None:
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def unsupported(self, *, after_condition: bool) -> None:
        """Refuse parentheses and (between conditions) ``or`` by name: they look like they should work."""
        here = self.text[self.pos:self.pos + 1]
        if here and here in "()":
            raise self.fail("parentheses are not supported: conditions are joined by 'and' (or ',') only")
        if after_condition and _OR.match(self.text, self.pos):
            raise self.fail("'or' is not supported: every condition must hold (join them with 'and' or ',')")

    def metric(self) -> tuple[str, str]:
        self.unsupported(after_condition=False)
        start = self.pos
        word = self.match(_WORD)
        if word is None:
            if self.at_end():
                raise self.fail("expected a metric name, found the end of the filter")
            raise self.fail(f"expected a metric name, found {self.text[self.pos]!r}")
        if not METRIC_NAME.fullmatch(word):
            if len(word) > 64:
                problem = "a metric name is at most 64 characters"
            elif word.lower() != word:
                problem = f"metric names are lowercase ({word.lower()[:64]}, not {word[:64]})"
            else:
                problem = f"a metric name starts with a letter ({word[:64]!r} does not)"
            raise self.fail(problem, start)
        name = word
        dataset = ""
        self.skip_space()
        if self.text.startswith("[", self.pos):
            self.pos += 1
            self.skip_space()
            found = self.match(DATASET_NAME)
            if found is None:
                raise self.fail("expected a dataset name inside [ ] (letters, digits, '_', '-', '.', '/', ':')")
            dataset = found
            self.skip_space()
            if not self.text.startswith("]", self.pos):
                raise self.fail("expected ']' after the dataset name")
            self.pos += 1
        return name, dataset

    def condition(self) -> Condition:
        name, dataset = self.metric()
        self.skip_space()
        op = self.match(_OP)
        if op is None:
            raise self.fail(f"expected an operator (<, <=, >, >=, =, ==, !=) after {render_metric(name, dataset)}")
        self.skip_space()
        start = self.pos
        if _NOT_FINITE.match(self.text, self.pos):
            raise self.fail("NaN and infinity are not allowed: compare with a finite number")
        literal = self.match(_NUMBER)
        if literal is None:
            found = "the end of the filter" if self.at_end() else repr(self.text[self.pos])
            raise self.fail(f"expected a number after '{op}', found {found}")
        if self.pos < len(self.text) and _NAME_CHAR.match(self.text, self.pos):
            raise self.fail(f"unexpected {self.text[self.pos]!r} after the number {literal}")
        value = float(literal)
        if not math.isfinite(value):
            raise self.fail(f"the number {literal} is out of range", start)
        return Condition(metric=name, op="==" if op == "=" else op, value=value, dataset=dataset)

    def parse(self) -> list[Condition]:
        conditions: list[Condition] = []
        self.skip_space()
        while True:
            conditions.append(self.condition())
            self.skip_space()
            if self.at_end():
                return conditions
            if len(conditions) >= MAX_CONDITIONS:
                raise self.fail(f"at most {MAX_CONDITIONS} conditions")
            if self.text.startswith(",", self.pos):
                self.pos += 1
            elif self.match(_AND) is None:
                self.unsupported(after_condition=True)
                raise self.fail(f"expected 'and', ',' or the end of the filter, found {self.text[self.pos]!r}")
            self.skip_space()


def parse(text: str, *, max_chars: int = 256) -> list[Condition]:
    """The conditions of a ``where`` filter (all must hold); :class:`InvalidWhere` on any mistake."""
    if not isinstance(text, str):
        raise InvalidWhere(f"where filter: expected text, not {type(text).__name__}")
    if len(text) > max_chars:
        raise InvalidWhere(f"where filter: at most {max_chars} characters (this one has {len(text)})")
    for i, c in enumerate(text):
        if (ord(c) < 32 and c != "\t") or ord(c) == 127:
            raise InvalidWhere("where filter: control characters are not allowed", text=text.replace(c, " "),
                               position=i)
    if not text.strip():
        raise InvalidWhere("where filter: it is empty (leave it out to match every version)")
    return _Parser(text).parse()


def parse_metric_sort(sort: str) -> tuple[str, str] | None:
    """``(name, dataset)`` for a sort key ``metric:NAME`` or ``metric:NAME[DATASET]``; None for another key."""
    if not isinstance(sort, str) or not sort.startswith(SORT_PREFIX):
        return None
    parser = _Parser(sort)
    parser.pos = len(SORT_PREFIX)
    if len(sort) > 512 or any(ord(c) < 32 for c in sort):
        raise InvalidWhere("sort: a metric sort key is metric:NAME or metric:NAME[DATASET]")
    try:
        name, dataset = parser.metric()
    except InvalidWhere as exc:
        raise InvalidWhere(str(exc).replace("where filter:", "sort:", 1), hint=_SORT_HINT) from None
    if not parser.at_end():
        raise InvalidWhere("sort: unexpected text after the metric", text=sort, position=parser.pos, hint=_SORT_HINT)
    return name, dataset


_SORT_HINT = "sort by a metric with metric:NAME or metric:NAME[DATASET], e.g. metric:eval_loss"
