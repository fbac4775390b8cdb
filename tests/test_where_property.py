"""Property-based tests of the ``where`` grammar (registry.where, issue 15): any text is parsed or refused with
InvalidWhere (never another exception), and a parsed filter rendered back parses to the same conditions."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from registry.errors import RegistryError
from registry.where import MAX_CONDITIONS, OPERATORS, Condition, InvalidWhere, parse, parse_metric_sort, render

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.from_regex(r"[a-z][a-z0-9_.\-]{0,20}", fullmatch=True)
datasets = st.just("") | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_./\-]{0,20}", fullmatch=True)
values = st.floats(allow_nan=False, allow_infinity=False)
conditions = st.builds(Condition, metric=names, op=st.sampled_from(sorted(OPERATORS)), value=values,
                       dataset=datasets)
# text near the grammar: its tokens, glued at random, so that most inputs get deep into the parser
pieces = st.sampled_from(["eval_loss", "acc", "[", "]", "wiki", "<", "<=", ">", ">=", "=", "==", "!=", "!", "and",
                          "AND", "or", ",", "(", ")", " ", "\t", "1", "-2.5", ".5", "1e-3", "1e999", "nan", "inf",
                          "e", ".", "-", "_", "Ä", "\n", "\x00", "|"])
near = st.lists(pieces, max_size=24).map("".join)


def parses_or_refuses(text: str) -> list[Condition] | None:
    try:
        return parse(text)
    except InvalidWhere as exc:
        assert isinstance(exc, RegistryError) and str(exc).startswith("where filter:") and exc.hint
        if exc.position is not None:
            assert 0 <= exc.position <= len(text) and "^" in str(exc).splitlines()[-1]
        return None


@FAST
@given(st.text(max_size=80) | near)
@example("eval_loss<2.5 and accuracy[wiki]>=0.9")
@example("a<1 or b<2")
@example("(a<1)")
@example("a[<1")
@example("a<1e999")
def test_any_text_parses_or_is_refused_with_the_typed_error(text: str) -> None:
    found = parses_or_refuses(text)
    if found is not None:
        assert 1 <= len(found) <= MAX_CONDITIONS
        assert all(math.isfinite(c.value) and c.op in OPERATORS for c in found)
        assert parse(render(found), max_chars=10_000) == found


@FAST
@given(st.lists(conditions, min_size=1, max_size=MAX_CONDITIONS), st.sampled_from([" and ", ",", " AND ", " , "]))
def test_rendered_conditions_parse_back_to_themselves(chosen: list[Condition], joiner: str) -> None:
    long = 10_000  # rendered long names and values may pass the 256 characters a search filter is allowed
    assert parse(render(chosen), max_chars=long) == chosen
    assert parse(joiner.join(c.render() for c in chosen), max_chars=long) == chosen
    spaced = joiner.join(f" {c.metric} {'[ ' + c.dataset + ' ]' if c.dataset else ''} {c.op} {c.value!r} "
                         for c in chosen)
    assert parse(spaced, max_chars=long) == chosen


@FAST
@given(st.text(max_size=40) | near.map(lambda s: "metric:" + s))
def test_sort_keys_parse_or_are_refused_with_the_typed_error(text: str) -> None:
    try:
        chosen = parse_metric_sort(text)
    except InvalidWhere:
        return
    if chosen is not None:
        name, dataset = chosen
        assert parse_metric_sort("metric:" + (f"{name}[{dataset}]" if dataset else name)) == (name, dataset)
    else:
        assert not text.startswith("metric:")
