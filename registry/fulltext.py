"""Full-text search over names, descriptions and tags: one tokenizer for the text and the query, two engines.

What is indexed is ``adapter_versions.search_text`` (written by :func:`registry.catalog.refresh_search_text`):
PostgreSQL derives the generated ``tsvector`` column ``search_vector`` (``'english'``, GIN index) from it, SQLite
keeps the FTS5 table ``version_fts`` (``porter unicode61``, rowid = version id) in step with it.

Both sides go through :func:`words`, so the two engines see the same words: the stored text is the words joined
by spaces (:func:`body`), and a query is its words, never its punctuation. PostgreSQL's parser would otherwise
read ``tone.v2`` as one host name and keep accents that FTS5 folds away. A query's words are ANDed, English stop
words (PostgreSQL's own list) are left out, every word is stemmed (``supporting`` finds ``support``) and the last
one also matches as a prefix (``supp`` finds ``support``). A query never reaches SQL as text: it is cut into
letters-and-digits words, which are then bound as one parameter (``to_tsquery('english', :q)`` on PostgreSQL,
``MATCH :q`` with each word double-quoted on SQLite), so no operator of either query language can be written.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from sqlalchemy import CTE, ColumnElement, Float, bindparam, func, literal_column, select, table, type_coerce
from sqlalchemy.orm import Session

from registry import models as m
from registry.errors import RegistryError

_WORD = re.compile(r"[^\W_]+")  # letters and digits (any script); everything else separates words

#: PostgreSQL's ``english`` stop words (``tsearch_data/english.stop``): its dictionary drops them from texts and
#: queries, so the query leaves them out on SQLite too, where FTS5 would ask for them.
_ENGLISH_STOP = """
i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself it
its itself they them their theirs themselves what which who whom this that these those am is are was were be been
being have has had having do does did doing a an the and but if or because as until while of at by for with about
against between into through during before after above below to from up down in out on off over under again
further then once here there when where why how all any both each few more most other some such no nor not only
own same so than too very s t can will just don should now
"""
STOP_WORDS = frozenset(_ENGLISH_STOP.split())


def words(value: str) -> list[str]:
    """The words of ``value``, lowercased, accents removed (``Über-Tone.v2`` -> ``uber tone v2``)."""
    folded = "".join(c for c in unicodedata.normalize("NFKD", value) if not unicodedata.combining(c))
    return _WORD.findall(folded.lower())


def body(value: str) -> str:
    """What is stored in ``search_text`` for ``value``: its words, separated by spaces."""
    return " ".join(words(value))


def query_words(query: str) -> list[str]:
    """The words a query searches for (each once); a :class:`RegistryError` if none is left once punctuation and
    stop words are gone. Its length and characters are the caller's to check (``queries.search`` does)."""
    found = [w for w in words(query) if w not in STOP_WORDS]
    if not found:
        raise RegistryError(f"the query {query[:80]!r} has no words to search for",
                            hint="give letters or digits, e.g. --query \"support tone\" (words like 'the' and "
                                 "'for' are ignored)")
    return list(dict.fromkeys(found))  # each word once, in order (the last one stays last)


def check_query(query: str, limit: int) -> None:
    """A query of at most ``limit`` printable characters with at least one word to search for."""
    if not isinstance(query, str) or len(query) > limit or any(ord(c) < 32 or ord(c) == 127 for c in query):
        raise RegistryError(f"the query filter must be at most {limit} printable characters")
    query_words(query)


def tsquery_text(query: str) -> str:
    """The argument of ``to_tsquery('english', ...)``: ``support & ton:*`` (words are letters and digits only)."""
    found = query_words(query)
    return " & ".join([*found[:-1], f"{found[-1]}:*"])


def fts5_text(query: str) -> str:
    """The right-hand side of FTS5's ``MATCH``: ``"support" "ton"*`` (each word quoted, so never an operator)."""
    found = query_words(query)
    quoted = ['"' + w.replace('"', '""') + '"' for w in found]
    return " ".join([*quoted[:-1], quoted[-1] + "*"])


_VECTOR = literal_column("adapter_versions.search_vector")


def _tsquery(query: str) -> ColumnElement:  # type: ignore[type-arg]
    return func.to_tsquery(literal_column("'english'::regconfig"), bindparam(None, tsquery_text(query), unique=True))


@lru_cache(maxsize=64)
def _fts_hits(match: str) -> CTE:
    """SQLite: the FTS5 rows matching ``match`` with their score, one CTE that the condition and the sort key share
    (so FTS5 runs once; SQLite materialises it and indexes it for the sort key's lookup by version id). Cached, so
    that both get the same object: a statement may not hold two CTEs of one name."""
    return (select(literal_column("rowid").label("version_id"), literal_column("-bm25(version_fts)").label("score"))
            .select_from(table("version_fts"))
            .where(literal_column("version_fts").op("MATCH")(bindparam("fts_match", match)))
            .cte("fts_hits"))


def condition(session: Session, query: str) -> ColumnElement[bool]:
    """Versions whose indexed text has every word of ``query`` (to add to a search's WHERE)."""
    if session.get_bind().dialect.name == "postgresql":
        return _VECTOR.op("@@")(_tsquery(query))  # type: ignore[no-any-return]
    hits = _fts_hits(fts5_text(query))
    return m.AdapterVersion.id.in_(select(hits.c.version_id))


def relevance(session: Session, query: str) -> ColumnElement[float]:
    """How well a version matches ``query``, higher is better (to sort by, newest first among equals).

    PostgreSQL: ``ts_rank`` (more occurrences, and for several words closer ones, rank higher; ``ts_rank_cd``,
    cover density, took twice as long on two-word queries at 100k versions); SQLite: FTS5's ``bm25``, negated
    (FTS5 gives lower numbers to better matches), which also favours shorter texts. The two agree where one text
    clearly has more occurrences than another of about its length; close calls may be ordered differently."""
    if session.get_bind().dialect.name == "postgresql":
        return type_coerce(func.ts_rank(_VECTOR, _tsquery(query)), Float)
    hits = _fts_hits(fts5_text(query))
    return type_coerce(select(hits.c.score).where(hits.c.version_id == m.AdapterVersion.id).scalar_subquery(), Float)
