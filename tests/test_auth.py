"""Users, API tokens, grants, principals and the audit log, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select, text

from registry import audit, auth
from registry.db import make_engine, session_factory, upgrade
from registry.errors import AuthRecordNotFound, ConflictError, Forbidden, InvalidName, Unauthenticated
from registry.models import ApiToken, AuditEvent, User, utcnow


@pytest.fixture
def session(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    upgrade(engine)
    with session_factory(engine)() as s:
        yield s
    engine.dispose()


def _token(session, user: str = "alice", **kwargs) -> tuple[ApiToken, str]:  # type: ignore[no-untyped-def]
    token, plaintext = auth.create_token(session, user, **kwargs)
    session.commit()
    return token, plaintext


@pytest.fixture
def people(session):  # type: ignore[no-untyped-def]
    """root (admin), alice (no grants), bob (group cx, which writes cx-*), carol (manages cx-*)."""
    auth.create_user(session, "root", admin=True)
    auth.create_user(session, "alice")
    auth.create_user(session, "bob", groups=["cx", "ml"])
    auth.create_user(session, "carol")
    auth.add_grant(session, "group:cx", "cx-*", "write")
    auth.add_grant(session, "carol", "cx-*", "manage")
    session.commit()
    return session


# ---------------------------------------------------------------- tokens


def test_token_round_trip(people):
    token, plaintext = _token(people, "bob", label="laptop")
    match = re.fullmatch(r"adreg_([0-9]+)_([A-Za-z0-9_-]{43})", plaintext)
    assert match and int(match.group(1)) == token.id
    principal = auth.authenticate(people, plaintext)
    people.commit()
    assert principal == auth.Principal("bob", False, ("cx", "ml"), "write", (("cx-*", "write"),))
    listed = auth.list_tokens(people, "bob")
    assert [t["id"] for t in listed] == [token.id] and listed[0]["label"] == "laptop"
    assert listed[0]["last_used_at"] is not None and listed[0]["user"] == "bob"
    assert not any("hash" in key for key in listed[0])
    assert auth.list_tokens(people, "alice") == []


def test_token_sentinel_only_the_hash_is_stored(people):
    """After creating, using and auditing a token, no column of any table holds its plaintext or secret."""
    token, plaintext = _token(people, "bob")
    secret = plaintext[len(f"adreg_{token.id}_"):]
    assert len(secret) == 43
    auth.authenticate(people, plaintext)
    audit.record(people, "bob", "token.create", after={"id": token.id, "scope": token.scope})
    people.commit()
    assert people.get(ApiToken, token.id).token_hash == hashlib.sha256(secret.encode()).hexdigest()
    engine = people.get_bind()
    cells = 0
    with engine.connect() as conn:
        for table in inspect(engine).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                for value in row:
                    cells += 1
                    assert secret not in str(value), f"the token's secret is stored in {table}"
                    assert plaintext not in str(value), f"the token is stored in {table}"
    assert cells > 20  # the scan saw the users, grants, token and audit rows
    assert secret not in json.dumps(auth.list_tokens(people))


def test_wrong_secret_and_unknown_id_are_refused_alike(people):
    token, plaintext = _token(people)
    prefix, secret = f"adreg_{token.id}_", plaintext[len(f"adreg_{token.id}_"):]
    wrong_secret = prefix + ("A" if secret[0] != "A" else "B") + secret[1:]
    unknown_id = f"adreg_{token.id + 1000}_{secret}"
    errors = []
    for presented in (wrong_secret, unknown_id):
        with pytest.raises(Unauthenticated) as info:
            auth.authenticate(people, presented)
        errors.append((str(info.value), info.value.hint))
    assert errors[0] == errors[1]
    assert auth.authenticate(people, plaintext).name == "alice"  # the real one still works


@pytest.mark.parametrize("presented", [
    "", "adreg_", "Bearer adreg_1_x", "adreg_1_short", "adreg_0_" + "a" * 43, "adreg_99999999999_" + "a" * 43,
    "ADREG_1_" + "a" * 43, "adreg_1_" + "a" * 42 + "!", None, b"adreg_1_" + b"a" * 43,
])
def test_malformed_tokens_are_refused(people, presented):
    with pytest.raises(Unauthenticated, match="invalid API token"):
        auth.authenticate(people, presented)


def test_a_token_with_extra_characters_is_refused(people):
    _, plaintext = _token(people)
    for presented in (plaintext + "x", " " + plaintext, plaintext[:-1]):
        with pytest.raises(Unauthenticated):
            auth.authenticate(people, presented)


def test_revoked_expired_and_disabled_are_refused(people):
    revoked, revoked_text = _token(people)
    expired, expired_text = _token(people, expires_in=timedelta(hours=1))
    _, disabled_text = _token(people, "bob")
    assert auth.authenticate(people, revoked_text).name == "alice"
    assert auth.authenticate(people, expired_text).name == "alice"

    first = auth.revoke_token(people, revoked.id)
    assert auth.revoke_token(people, revoked.id)["revoked_at"] == first["revoked_at"]  # idempotent
    people.get(ApiToken, expired.id).expires_at = utcnow() - timedelta(seconds=1)
    auth.set_user_disabled(people, "bob")
    people.commit()
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate(people, revoked_text)
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authenticate(people, expired_text)
    with pytest.raises(Unauthenticated, match="disabled"):
        auth.authenticate(people, disabled_text)
    with pytest.raises(ConflictError, match="disabled"):
        auth.create_token(people, "bob")
    auth.set_user_disabled(people, "bob", False)
    assert auth.authenticate(people, disabled_text).name == "bob"
    with pytest.raises(AuthRecordNotFound):
        auth.revoke_token(people, 10**6)


def test_last_used_at_is_written_at_most_once_a_minute(people):
    token, plaintext = _token(people)
    auth.authenticate(people, plaintext)
    people.commit()
    first = people.get(ApiToken, token.id).last_used_at
    assert first is not None
    auth.authenticate(people, plaintext)
    people.commit()
    assert people.get(ApiToken, token.id).last_used_at == first
    people.get(ApiToken, token.id).last_used_at = utcnow() - timedelta(minutes=2)
    people.commit()
    auth.authenticate(people, plaintext)
    people.commit()
    assert people.get(ApiToken, token.id).last_used_at.replace(tzinfo=None) > first.replace(tzinfo=None)


def test_token_options_are_checked(people):
    with pytest.raises(Forbidden, match="only admins"):
        auth.create_token(people, "alice", scope="admin")
    with pytest.raises(InvalidName, match="scope"):
        auth.create_token(people, "alice", scope="owner")
    with pytest.raises(InvalidName, match="positive"):
        auth.create_token(people, "alice", expires_in=timedelta(0))
    with pytest.raises(InvalidName, match="label"):
        auth.create_token(people, "alice", label="x" * 129)
    with pytest.raises(AuthRecordNotFound):
        auth.create_token(people, "nobody")
    token, _ = _token(people, "root", scope="admin", expires_in=timedelta(days=1))
    assert token.scope == "admin" and token.expires_at is not None


# ---------------------------------------------------------------- permissions


def test_read_scope_token_cannot_write(people):
    _, plaintext = _token(people, "bob", scope="read")
    principal = auth.authenticate(people, plaintext)
    assert principal.can("read", "cx-tone") and principal.can("read", "legal-x")
    assert not principal.can("write", "cx-tone")  # the grant would allow it; the scope does not
    with pytest.raises(Forbidden, match="scope read"):
        principal.require("write", "cx-tone")
    admin_read = auth.principal_for(people, "root", scope="read")
    assert not admin_read.can("write", "cx-tone") and not admin_read.can("admin")


def test_group_writer_writes_only_matching_names(people):
    _, plaintext = _token(people, "bob")
    bob = auth.authenticate(people, plaintext)
    assert bob.can("write", "cx-tone") and bob.can("write", "cx-legal-2")
    assert not bob.can("write", "legal-x") and not bob.can("write", "cxtone")
    with pytest.raises(Forbidden, match="legal-x") as info:
        bob.require("write", "legal-x")
    assert "write or manage grant" in str(info.value)
    assert not bob.can("manage", "cx-tone") and not bob.can("admin")
    alice = auth.principal_for(people, "alice", scope="write")
    assert alice.can("read", "cx-tone") and not alice.can("write", "cx-tone")


def test_manage_grant_and_admin(people):
    carol = auth.principal_for(people, "carol", scope="write")
    assert carol.can("manage", "cx-tone") and carol.can("write", "cx-tone") and not carol.can("manage", "legal-x")
    root = auth.authenticate(people, _token(people, "root", scope="admin")[1])
    assert all(root.can(p, n) for p in ("read", "write", "manage") for n in ("cx-tone", "legal-x"))
    assert root.can("admin")
    root_write = auth.principal_for(people, "root", scope="write")
    assert root_write.can("manage", "legal-x") and not root_write.can("admin")  # a write token never administers
    with pytest.raises(Forbidden, match="scope write, not admin"):
        root_write.require("admin")


def test_changes_are_checked_against_by(people):
    bob = auth.principal_for(people, "bob", scope="write")
    carol = auth.principal_for(people, "carol", scope="write")
    root = auth.principal_for(people, "root", scope="admin")
    with pytest.raises(Forbidden):
        auth.create_user(people, "eve", by=bob)
    with pytest.raises(Forbidden):
        auth.create_token(people, "alice", by=bob)
    own, _ = auth.create_token(people, "bob", scope="read", by=bob)
    with pytest.raises(Forbidden):
        auth.create_token(people, "root", scope="admin", by=auth.principal_for(people, "root", scope="write"))
    with pytest.raises(Forbidden):
        auth.revoke_token(people, own.id, by=carol)
    assert auth.revoke_token(people, own.id, by=bob)["revoked_at"] is not None
    with pytest.raises(Forbidden):
        auth.list_tokens(people, by=bob)
    assert [t["user"] for t in auth.list_tokens(people, "bob", by=bob)] == ["bob"]
    # carol manages cx-*: grants inside it, nothing wider
    assert auth.add_grant(people, "alice", "cx-tone*", "write", by=carol)["permission"] == "write"
    for pattern in ("*", "c*", "legal-*"):
        with pytest.raises(Forbidden):
            auth.add_grant(people, "alice", pattern, "write", by=carol)
    with pytest.raises(Forbidden):
        auth.add_grant(people, "alice", "cx-*", "write", by=bob)
    assert auth.create_user(people, "eve", by=root).name == "eve"


def test_grants_are_set_listed_and_removed(people):
    assert [(g["subject"], g["pattern"], g["permission"]) for g in auth.list_grants(people)] == [
        ("carol", "cx-*", "manage"), ("group:cx", "cx-*", "write")]
    auth.add_grant(people, "group:cx", "cx-*", "manage")  # the same subject and pattern: a new permission
    assert auth.list_grants(people, "group:cx")[0]["permission"] == "manage"
    assert auth.remove_grant(people, "group:cx", "cx-*")["permission"] == "manage"
    people.commit()
    assert not auth.principal_for(people, "bob", scope="write").can("write", "cx-tone")
    with pytest.raises(AuthRecordNotFound):
        auth.remove_grant(people, "group:cx", "cx-*")
    with pytest.raises(InvalidName):
        auth.add_grant(people, "group:cx", "cx-*", "own")


def test_users_are_unique_and_listed(people):
    with pytest.raises(ConflictError):
        auth.create_user(people, "alice")
    assert [u["name"] for u in auth.list_users(people)] == ["alice", "bob", "carol", "root"]
    bob = next(u for u in auth.list_users(people) if u["name"] == "bob")
    assert bob["groups"] == ["cx", "ml"] and not bob["is_admin"] and not bob["disabled"]
    assert people.scalar(select(func.count()).select_from(User)) == 4


def test_names_and_patterns_are_validated():
    for good in ("cx-*", "*", "cx-?", "a.b_c-d*"):
        assert auth.check_pattern(good) == good
    for bad in ("", "CX-*", "cx-[ab]", "cx/*", "a" * 65, "cx *", None):
        with pytest.raises(InvalidName):
            auth.check_pattern(bad)
    assert auth.check_subject("group:cx") == "group:cx" and auth.check_subject("alice") == "alice"
    for bad in ("group:", "group:CX", "Alice", "a:b", "x" * 65, "group:a..b"):
        with pytest.raises(InvalidName):
            auth.check_subject(bad)
    assert auth.covers("cx-*", "cx-tone*") and auth.covers("cx-*", "cx-?") and auth.covers("cx-?", "cx-?")
    assert not auth.covers("cx-*", "c*") and not auth.covers("cx-?*", "cx-ab") and not auth.covers("cx-a", "cx-*")


def test_user_and_group_names_are_slugs(session):
    with pytest.raises(InvalidName):
        auth.create_user(session, "Bad Name")
    with pytest.raises(InvalidName):
        auth.create_user(session, "dave", groups=["ok", "Not OK"])
    assert session.scalar(select(func.count()).select_from(User)) == 0


def test_embedded_principal(monkeypatch):
    principal = auth.embedded_principal()
    assert principal.is_admin and principal.scope == "admin" and principal.name and principal.can("admin")

    def no_login() -> str:
        raise OSError("no login name")

    monkeypatch.setattr(auth.getpass, "getuser", no_login)
    assert auth.embedded_principal().name == "local"


# ---------------------------------------------------------------- audit


def test_audit_events_newest_first_filtered_by_name_and_since(session):
    old = audit.record(session, "alice", "version.register", adapter_name="cx-tone", ref="cx-tone:1",
                       after={"version": 1, "sha": "ab", "at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    old.at = utcnow() - timedelta(hours=2)
    audit.record(session, "bob", "alias.set", adapter_name="cx-tone", ref="cx-tone@production",
                 before=None, after={"version": 1})
    audit.record(session, "bob", "tag.set", adapter_name="legal-x", ref="legal-x:3", after={"team": "law"})
    audit.record(session, "root", "user.add", after={"name": "carol", "groups": {"ml", "cx"}})
    session.commit()

    everything = audit.events(session)
    assert [e["action"] for e in everything] == ["user.add", "tag.set", "alias.set", "version.register"]
    assert json.loads(json.dumps(everything)) == everything  # JSON-friendly as returned
    assert everything[-1]["after"]["at"] == "2026-01-01T00:00:00+00:00"
    assert everything[0]["after"]["groups"] == ["cx", "ml"]
    assert datetime.fromisoformat(everything[0]["at"]).tzinfo is not None
    assert [e["ref"] for e in audit.events(session, name="cx-tone")] == ["cx-tone@production", "cx-tone:1"]
    recent = audit.events(session, since=utcnow() - timedelta(hours=1))
    assert [e["action"] for e in recent] == ["user.add", "tag.set", "alias.set"]
    naive_since = (utcnow() - timedelta(hours=1)).replace(tzinfo=None)
    assert [e["action"] for e in audit.events(session, name="cx-tone", since=naive_since)] == ["alias.set"]
    assert len(audit.events(session, limit=2)) == 2
    with pytest.raises(ValueError):
        audit.events(session, limit=0)


@pytest.mark.parametrize("document", [
    {"token": "x"}, {"hf_token": "x"}, {"Secret": "x"}, {"nested": {"password": "x"}}, {"list": [{"api_key": 1}]},
    {"value": "adreg_12_" + "a" * 43},
])
def test_audit_refuses_secrets(session, document):
    with pytest.raises(ValueError, match="never recorded"):
        audit.record(session, "alice", "token.create", after=document)
    with pytest.raises(ValueError, match="never recorded"):
        audit.record(session, "alice", "token.create", before=document)
    assert session.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_audit_keeps_harmless_keys_and_checks_its_fields(session):
    event = audit.record(session, "alice", "version.register", after={"tokenizer": "llama", "id": 3})
    assert event.after == {"tokenizer": "llama", "id": 3}
    for actor, action in (("", "alias.set"), ("alice", "alias"), ("alice", "Alias.Set")):
        with pytest.raises(ValueError):
            audit.record(session, actor, action)
