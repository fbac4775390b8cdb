"""Descriptions (``adreg describe``) and full-text search (``Registry.search(query=...)``, ``adreg list --query``) on
SQLite (FTS5) and PostgreSQL (tsvector + GIN): what is found, in which order, with other filters, after edits, and
what hostile queries do (never a database error, never everything)."""

from __future__ import annotations

import json

import pytest

from registry import fulltext
from registry.errors import AdapterNotFound, Forbidden, InvalidReference, RegistryError
from registry.queries import SearchFilters


def refs(versions):  # type: ignore[no-untyped-def]
    return [v.ref for v in versions]


@pytest.fixture
def corpus(registry, tiny):  # type: ignore[no-untyped-def]
    """Five versions of four adapters, registered oldest first (ids 1..5)."""
    registry.register(tiny["tone"], name="support-tone", tags={"team": "cx"},
                      description="Polite replies for customer support")
    registry.register(tiny["tone2"], name="support-tone")
    registry.register(tiny["legal"], name="legal-drafts", tags={"topic": "support"},
                      description="Contract clauses for lawyers")
    registry.register(tiny["gpt2_attn"], name="gpt2-chat", tags={"lang": "fr"},
                      description="Friendly chat about weather")
    registry.register(tiny["tone"], name="billing-bot", tags={"topic": "refund"},
                      description="Answers billing questions politely")
    return registry


# -- what is found -----------------------------------------------------------------------------------------------


def test_names_descriptions_and_tags_are_found(corpus):
    assert refs(corpus.search(query="legal")) == ["legal-drafts:1"]  # adapter name
    assert refs(corpus.search(query="clauses")) == ["legal-drafts:1"]  # version description
    assert refs(corpus.search(query="weather")) == ["gpt2-chat:1"]
    assert refs(corpus.search(query="cx")) == ["support-tone:1"]  # tag value
    assert refs(corpus.search(query="topic")) == ["billing-bot:1", "legal-drafts:1"]  # tag key (same rank: newest)
    assert corpus.search(query="small talk") == []
    corpus.describe("gpt2-chat", "Small talk model for the web")  # the adapter's description
    assert refs(corpus.search(query="small talk")) == ["gpt2-chat:1"]
    assert refs(corpus.search(query="GPT2 Chat")) == ["gpt2-chat:1"]  # case folded, name words split
    assert refs(corpus.search(query="zebra")) == []


def test_stemming_prefix_and_punctuation(corpus):
    everything_support = ["support-tone:1", "support-tone:2", "legal-drafts:1"]
    assert sorted(refs(corpus.search(query="supporting"))) == sorted(everything_support)
    assert refs(corpus.search(query="clause lawyer")) == ["legal-drafts:1"]  # plural stored, singular asked
    assert sorted(refs(corpus.search(query="supp"))) == sorted(everything_support)  # the last word is a prefix
    assert refs(corpus.search(query="cla")) == ["legal-drafts:1"]
    assert refs(corpus.search(query="supp tone")) == []  # ... only the last one
    assert refs(corpus.search(query="polite replies")) == ["support-tone:1"]  # every word must occur
    assert refs(corpus.search(query="polite weather")) == []
    assert refs(corpus.search(query="  Contract,  clauses!  ")) == ["legal-drafts:1"]
    assert refs(corpus.search(query="the clauses for a lawyer")) == ["legal-drafts:1"]  # stop words ignored
    assert refs(corpus.search(query="refund-billing")) == ["billing-bot:1"]  # punctuation separates words


def test_accents_and_dotted_names_agree_on_both_databases(registry, tiny):
    registry.register(tiny["tone"], name="tone.v2", description="Réponses polies en français")
    for query in ("tone", "v2", "tone.v2", "reponses", "réponses", "FRANÇAIS", "francais"):
        assert refs(registry.search(query=query)) == ["tone.v2:1"], query


# -- order -------------------------------------------------------------------------------------------------------


def test_best_match_first_unless_another_sort_is_asked(registry, tiny):
    # "refund" twice (name and description) against once (a tag), in texts of about the same length
    registry.register(tiny["tone"], name="refund-helper", description="Drafts refund answers")
    registry.register(tiny["legal"], name="billing-bot", tags={"topic": "refund"},
                      description="Answers billing questions politely")
    assert refs(registry.search(query="refund")) == ["refund-helper:1", "billing-bot:1"]
    assert refs(registry.search(query="refund", sort="relevance")) == ["refund-helper:1", "billing-bot:1"]
    assert refs(registry.search(query="refund", sort="relevance", descending=False)) == [
        "billing-bot:1", "refund-helper:1"]
    assert refs(registry.search(query="refund", sort="created")) == ["billing-bot:1", "refund-helper:1"]
    assert refs(registry.search(query="refund", sort="name", descending=False)) == [
        "billing-bot:1", "refund-helper:1"]
    assert refs(registry.search()) == ["billing-bot:1", "refund-helper:1"]  # no query: newest first
    with pytest.raises(RegistryError, match="sort by relevance needs a query"):
        registry.search(sort="relevance")


def test_query_with_other_filters_and_pages(corpus, tiny):
    assert refs(corpus.search(query="support", tags={"team": "cx"})) == ["support-tone:1"]
    assert refs(corpus.search(query="chat", base_model=str(tiny["gpt2"]))) == ["gpt2-chat:1"]
    assert refs(corpus.search(query="chat", base_model=str(tiny["llama"]))) == []
    assert refs(corpus.search(query="support", min_rank=8)) == ["legal-drafts:1"]
    whole = corpus.search_page(SearchFilters(query="support"))
    assert whole.total == 3 and sorted(refs(whole.items)) == ["legal-drafts:1", "support-tone:1", "support-tone:2"]
    pages = [corpus.search_page(SearchFilters(query="support", limit=1, offset=i)) for i in range(4)]
    assert [p.total for p in pages] == [3, 3, 3, 3]
    assert [refs(p.items) for p in pages[:3]] == [[v] for v in refs(whole.items)] and pages[3].items == []
    assert corpus.search_page(SearchFilters(query="zebra")).total == 0


# -- edits change what is found ----------------------------------------------------------------------------------


def test_describe_adapter_reaches_every_version_and_a_version_only_itself(corpus):
    latest = corpus.describe("support-tone", "Warm greetings for shop visitors")
    assert (latest.ref, latest.adapter_description) == ("support-tone:2", "Warm greetings for shop visitors")
    assert latest.description is None
    assert sorted(refs(corpus.search(query="greetings"))) == ["support-tone:1", "support-tone:2"]
    assert corpus.get("support-tone:1").adapter_description == "Warm greetings for shop visitors"
    assert corpus.get("support-tone:1").description == "Polite replies for customer support"  # untouched

    corpus.set_alias("support-tone:2", "production")
    second = corpus.describe("support-tone@production", "Handles escalations\n\twith care")
    assert (second.ref, second.description) == ("support-tone:2", "Handles escalations\n\twith care")
    assert refs(corpus.search(query="escalations")) == ["support-tone:2"]
    first = corpus.describe("support-tone:1", "")  # clears
    assert first.description is None and first.adapter_description == "Warm greetings for shop visitors"
    assert corpus.search(query="polite replies") == []
    assert refs(corpus.search(query="customer")) == []
    corpus.describe("support-tone", "   ")  # blank clears too
    assert corpus.search(query="greetings") == [] and corpus.get("support-tone").adapter_description is None
    assert sorted(refs(corpus.search(query="support"))) == ["legal-drafts:1", "support-tone:1", "support-tone:2"]


def test_describe_is_audited_with_before_and_after(corpus, registry):
    corpus.describe("gpt2-chat", "Small talk")
    corpus.describe("gpt2-chat:1", "Sunny weather only")
    events = [e for e in registry.audit_events(name="gpt2-chat") if e["action"].endswith(".describe")]
    assert [(e["action"], e["ref"], e["before"], e["after"]) for e in reversed(events)] == [
        ("adapter.describe", "gpt2-chat", {"description": None}, {"description": "Small talk"}),
        ("version.describe", "gpt2-chat:1", {"description": "Friendly chat about weather"},
         {"description": "Sunny weather only"}),
    ]


def test_describe_refusals_change_nothing(corpus, registry):
    before = len(registry.audit_events())
    with pytest.raises(RegistryError, match="control character"):
        corpus.describe("gpt2-chat", "bad\x00text")
    with pytest.raises(RegistryError, match="at most 4096"):
        corpus.describe("gpt2-chat:1", "x" * 4097)
    with pytest.raises(RegistryError, match="looks like an adreg API token"):
        corpus.describe("gpt2-chat", "call me with adreg_12_" + "a" * 32)
    with pytest.raises(AdapterNotFound, match="no adapter named 'nobody'"):
        corpus.describe("nobody", "text")
    with pytest.raises(AdapterNotFound, match="has no version 9"):
        corpus.describe("gpt2-chat:9", "text")
    with pytest.raises(AdapterNotFound, match="has no alias"):
        corpus.describe("gpt2-chat@production", "text")
    with pytest.raises(InvalidReference):
        corpus.describe("./some/folder", "text")
    assert len(registry.audit_events()) == before
    assert corpus.get("gpt2-chat").description == "Friendly chat about weather"
    assert corpus.get("gpt2-chat").adapter_description is None


def test_tag_changes_update_the_index(corpus):
    assert corpus.search(query="zebra") == []
    corpus.tag("gpt2-chat:1", {"mascot": "zebra"})
    assert refs(corpus.search(query="zebra")) == ["gpt2-chat:1"]
    assert refs(corpus.search(query="mascot")) == ["gpt2-chat:1"]
    corpus.tag("gpt2-chat:1", {"mascot": "okapi"})  # overwritten: the old value is gone from the index
    assert corpus.search(query="zebra") == [] and refs(corpus.search(query="okapi")) == ["gpt2-chat:1"]
    corpus.untag("gpt2-chat:1", ["mascot"])
    assert corpus.search(query="okapi") == [] and corpus.search(query="mascot") == []


# -- hostile queries ---------------------------------------------------------------------------------------------

NASTY = [
    '"', '""', "'", "''", "' OR 1=1 --", "'; DROP TABLE adapters; --", "1; SELECT pg_sleep(5)", "support' OR 'x'='x",
    'support" OR "weather', "support OR weather", "support | weather", "support & !weather", "!support", "(support",
    "support)", "((support))", "NEAR(support weather)", "support NEAR weather", "NEAR/2", "*", "**", "support*",
    "supp:*", "tone:*", ":", "::", "&", "&&", "|", "||", "!", "!!", "\\", "\\\\support", "support\\", "\\'", 'a\\"b',
    "body:support", "body:weather", "version_fts:support", "^support", "support + weather", "-support", "{support}",
    "support AND NOT weather", "NOT support", "AND", "OR", "%", "_", "%support%", "support_tone", "<->",
    "support <-> tone", "support:A", "support:*A", "ｓｕｐｐｏｒｔ", "𝔰𝔲𝔭𝔭𝔬𝔯𝔱", "sup\u0301port", "😀 support",
    "\u202eroddus", "١٢٣", "日本語",
    "\u00a0support\u00a0", "\ufeffsupport", "x" * 256, "support " * 32, "$1", "?", "@@", "to_tsquery('x')",
    "'english'", "E'\\x00'", "\u2028support",
]


def test_hostile_queries_never_fail_in_the_database_nor_match_everything(corpus):
    everything = len(corpus.search(limit=100))
    for query in NASTY:
        try:
            words = fulltext.query_words(query)
        except RegistryError:
            words = None
        if words is None or len(query) > 256 or any(ord(c) < 32 for c in query):
            with pytest.raises(RegistryError) as refused:
                corpus.search(query=query)
            assert type(refused.value) is RegistryError, query  # a clear refusal, not a database error
            continue
        found = corpus.search(query=query, limit=100)
        assert len(found) < everything, query
        # the same hits as the query's plain words: no operator of either query language got through
        assert refs(found) == refs(corpus.search(query=" ".join(words), limit=100)), query
    assert corpus.search(query='support" OR "weather') == []  # words are ANDed, never ORed
    assert corpus.search(query="support | weather") == []
    assert sorted(refs(corpus.search(query="!support"))) == ["legal-drafts:1", "support-tone:1", "support-tone:2"]


@pytest.mark.parametrize("query", ["", "   ", "!!!", "*", "the and of", "\t", "x" * 257, "support\x00", "a\x7fb"])
def test_queries_without_words_or_too_long_are_refused(registry, query):
    with pytest.raises(RegistryError) as refused:
        registry.search(query=query)
    assert "query" in str(refused.value)


# -- a catalog upgraded from before text search --------------------------------------------------------------------


def test_upgrade_from_0007_indexes_existing_versions(db_url, tmp_path, tiny):
    from sqlalchemy import inspect

    from registry import Registry
    from registry.db import current_revision, downgrade, make_engine, upgrade

    home = tmp_path / "home"
    Registry.init(db_url, home=home)
    with Registry(db_url, home=home) as reg:
        reg.register(tiny["tone"], name="old-tone", tags={"team": "helpdesk"}, description="Courteous answers")
    engine = make_engine(db_url)
    try:
        downgrade(engine, "0007")  # as it was before text search: no search_text, no index
        assert current_revision(engine) == "0007"
        assert "search_text" not in {c["name"] for c in inspect(engine).get_columns("adapter_versions")}
        upgrade(engine)
    finally:
        engine.dispose()
    with Registry(db_url, home=home) as reg:
        for query in ("courteous", "helpdesk", "old tone", "answer"):
            assert refs(reg.search(query=query)) == ["old-tone:1"], query
        assert reg.search(query="zebra") == []


# -- the CLI and the server ----------------------------------------------------------------------------------------




@pytest.fixture
def adreg(adreg, monkeypatch):  # type: ignore[no-untyped-def]
    """conftest's ``adreg``, with tables one row a line whatever the terminal."""
    from registry.cli_output import stdout

    monkeypatch.setattr(stdout, "width", 250)
    return adreg


def test_cli_describe_and_list_query(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "support-tone", "-d", "Polite replies for customer support")
    adreg("register", str(tiny["legal"]), "--name", "legal-drafts", "--tag", "topic=support")
    shown = json.loads(adreg("describe", "legal-drafts", "Contract clauses for lawyers", "--json").stdout)
    assert (shown["ref"], shown["adapter_description"], shown["description"]) == (
        "legal-drafts:1", "Contract clauses for lawyers", None)
    human = adreg("describe", "support-tone:1", "Polite support replies, support desk edition").stdout
    assert "Polite support replies, support desk edition" in human and "support-tone:1" in human
    listed = json.loads(adreg("list", "--query", "support", "--json").stdout)
    assert [v["ref"] for v in listed["items"]] == ["support-tone:1", "legal-drafts:1"] and listed["total"] == 2
    assert [v["ref"] for v in json.loads(adreg("list", "-q", "lawyer", "--json").stdout)["items"]] == [
        "legal-drafts:1"]
    by_time = json.loads(adreg("list", "-q", "support", "--sort", "created", "--json").stdout)
    assert [v["ref"] for v in by_time["items"]] == ["legal-drafts:1", "support-tone:1"]
    table = adreg("list", "--query", "support").stdout
    assert "description" in table and "Contract clauses for lawyers" in table and "1-2 of 2" in table
    refused = adreg("list", "--query", "!!!", code=1)
    assert "has no words" in refused.stderr and "Traceback" not in refused.stderr + refused.stdout
    assert "needs a query" in adreg("list", "--sort", "relevance", code=1).stderr
    assert "no adapter named" in adreg("describe", "ghost", "text", code=1).stderr
    adreg("describe", "legal-drafts", code=2)  # the text is required ("" clears)


def test_list_shows_a_short_description(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "tone", "-d", "A long description " + "word " * 40)
    table = adreg("list").stdout
    assert "A long description word" in table and "…" in table and "word " * 12 not in table


def test_describe_over_http_needs_write_on_the_adapter(server, tiny):
    from registry.remote import RemoteRegistry

    with RemoteRegistry(server.url, token=server.admin_token) as admin:
        admin.register(tiny["tone"], name="cx-tone")
        admin.register(tiny["legal"], name="legal")
        admin.add_user("bob")
        admin.add_grant("bob", "cx-*", "write")
        writer = admin.create_token("bob", scope="write")["token"]
        reader = admin.create_token("bob", scope="read")["token"]
    with RemoteRegistry(server.url, token=writer) as bob:
        assert bob.describe("cx-tone", "Customer tone").adapter_description == "Customer tone"
        assert bob.describe("cx-tone:1", "First cut").description == "First cut"
        with pytest.raises(Forbidden, match="legal"):
            bob.describe("legal", "mine now")
        assert refs(bob.search(query="customer tone")) == ["cx-tone:1"]
    with RemoteRegistry(server.url, token=reader) as bob_read:
        with pytest.raises(Forbidden, match="scope read"):
            bob_read.describe("cx-tone", "again")
        assert refs(bob_read.search(query="first cut")) == ["cx-tone:1"]
    with RemoteRegistry(server.url, token=server.admin_token) as admin:
        events = [e for e in admin.audit_events(name="cx-tone") if e["action"].endswith(".describe")]
        assert [(e["actor"], e["action"]) for e in reversed(events)] == [
            ("bob", "adapter.describe"), ("bob", "version.describe")]
        assert admin.get("legal").adapter_description is None
