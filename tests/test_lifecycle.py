"""Lifecycle of versions and adapters: deprecate / undeprecate, soft and hard delete, gc, rename, protected aliases
(SQLite and PostgreSQL through the `registry` fixture; one server for the HTTP permission answer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from registry import auth, endpoints
from registry.errors import AdapterNotFound, ConflictError, Forbidden, InvalidReference, ProtectedAlias, RegistryError
from registry.operations import lifecycle, versions


def refs(items) -> list[str]:  # type: ignore[no-untyped-def]
    return [v.ref for v in items]


def actions(reg, name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["action"] for e in reversed(reg.audit_events(name=name))]


def files_of(reg, ref: str) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """The version's store folder and its weights blob."""
    v = reg.get(ref)
    sha = v.weights_sha256
    return Path(v.path), reg.store.root / "blobs" / sha[:2] / f"{sha}.safetensors"


def as_user(reg, name: str, *, admin: bool = False, grant: str | None = None, permission: str = "write"):  # type: ignore[no-untyped-def]
    """A service acting as server user ``name`` (write token), as a request of theirs would."""
    reg.add_user(name, admin=admin)
    if grant:
        reg.add_grant(name, grant, permission)
    with reg.service.sessions() as session:
        principal = auth.principal_for(session, name, scope="admin" if admin else "write")
    return reg.service.acting_as(principal), principal


# -- deprecate / undeprecate ---------------------------------------------------------------------------------


def test_deprecate_round_trip_is_audited_and_latest_skips_it(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.register(tiny["tone2"], name="tone")
    assert registry.get("tone").ref == "tone:2"
    gone = registry.deprecate("tone:2", "worse eval loss than tone:1")
    assert (gone.status, gone.status_reason) == ("deprecated", "worse eval loss than tone:1")
    assert registry.get("tone").ref == "tone:1"  # latest is the newest *ready* version
    assert registry.get("tone:2").status == "deprecated"  # an exact reference still works
    listed = registry.search(name_like="tone")
    assert [(v.ref, v.status) for v in listed] == [("tone:2", "deprecated"), ("tone:1", "ready")]
    assert refs(registry.search(name_like="tone", status="ready")) == ["tone:1"]
    assert refs(registry.search(name_like="tone", status="deprecated")) == ["tone:2"]
    registry.deprecate("tone:1", "old")
    with pytest.raises(AdapterNotFound, match="no ready version") as info:
        registry.get("tone")
    assert "tone:2" in (info.value.hint or "")
    back = registry.undeprecate("tone:2")
    assert (back.status, back.status_reason) == ("ready", None) and registry.get("tone").ref == "tone:2"
    with pytest.raises(ConflictError, match="is not deprecated"):
        registry.undeprecate("tone:2")
    assert actions(registry, "tone") == ["version.register", "version.register", "version.deprecate",
                                         "version.deprecate", "version.undeprecate"]
    event = registry.audit_events(name="tone")[2]  # the first deprecation of tone:2 (newest first: 0 is undeprecate)
    assert (event["ref"], event["before"], event["after"]) == ("tone:2", {"status": "ready", "reason": None}, {
        "status": "deprecated", "reason": "worse eval loss than tone:1"})


def test_lifecycle_verbs_take_one_version_and_a_reason(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    with pytest.raises(InvalidReference, match="takes one version"):
        registry.deprecate("tone", "why")
    with pytest.raises(InvalidReference, match="takes one version"):
        registry.delete("tone")
    with pytest.raises(RegistryError, match="reason is required"):
        registry.deprecate("tone:1", "  ")
    with pytest.raises(RegistryError, match="control character"):
        registry.deprecate("tone:1", "bad\x00reason")
    with pytest.raises(AdapterNotFound):
        registry.deprecate("tone:9", "no such version")
    assert registry.get("tone:1").status == "ready"


# -- delete ----------------------------------------------------------------------------------------------------


def test_soft_delete_hides_the_version_but_lineage_keeps_the_tombstone(registry, tiny):
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    merged = registry.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="linear", name="mix").result
    tomb = registry.delete("tone:1", reason="leaked training data")
    assert (tomb.ref, tomb.status, tomb.status_reason) == ("tone:1", "deleted", "leaked training data")
    assert "tone:1" not in refs(registry.search())  # default listing: live versions only
    assert refs(registry.search(status="deleted")) == ["tone:1"]
    assert "tone:1" in refs(registry.search(status="any"))
    assert registry.versions_of("tone") == [] and refs(registry.versions_of("tone", include_deleted=True)) == ["tone:1"]
    with pytest.raises(AdapterNotFound) as info:
        registry.get("tone:1")
    message = str(info.value)
    assert "tone:1 was deleted on" in message and "leaked training data" in message
    assert "--status deleted" in (info.value.hint or "")
    with pytest.raises(AdapterNotFound, match="no ready version"):
        registry.get("tone")
    graph = registry.lineage(merged.ref)  # the live child's lineage still shows the deleted parent
    assert {n.ref: n.status for n in graph.nodes} == {"tone:1": "deleted", "legal:1": "ready", "mix:1": "ready"}
    assert registry.lineage("tone:1").root == "tone:1"  # and the tombstone's own lineage can be asked for
    assert [p.ref for p in registry.get("mix:1").parents] == ["tone:1", "legal:1"]
    with pytest.raises(ConflictError, match="already deleted"):
        registry.delete("tone:1")  # deleting twice is a clear error, not a silent no-op
    with pytest.raises(AdapterNotFound, match="was deleted"):
        registry.undeprecate("tone:1")
    with pytest.raises(AdapterNotFound, match="was deleted"):
        registry.deprecate("tone:1", "too late")
    event = registry.audit_events(name="tone")[0]
    assert event["action"] == "version.delete" and event["after"]["mode"] == "soft"
    assert event["after"]["reason"] == "leaked training data"


def test_registering_a_deleted_versions_files_again_restores_it(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.delete("tone:1")
    again = registry.register(tiny["tone"], name="tone")
    assert (again.ref, again.status) == ("tone:1", "ready") and registry.get("tone").ref == "tone:1"
    assert actions(registry, "tone")[-1] == "version.restore"


def test_aliases_refuse_deprecated_and_deleted_versions_without_force(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.register(tiny["tone2"], name="tone")
    registry.deprecate("tone:1", "superseded")
    with pytest.raises(ConflictError, match="tone:1 is deprecated .superseded.") as info:
        registry.set_alias("tone:1", "production")
    assert "--force" in (info.value.hint or "")
    assert registry.aliases("tone") == []
    assert registry.set_alias("tone:1", "production", force=True).aliases == ["production"]
    registry.delete("tone:2")
    with pytest.raises(AdapterNotFound, match="was deleted"):
        registry.set_alias("tone:2", "staging")
    registry.set_alias("tone:2", "staging", force=True)
    with pytest.raises(AdapterNotFound, match="tone@staging points at tone:2, which was deleted") as info:
        registry.get("tone@staging")
    assert "alias set" in (info.value.hint or "")


def test_deleting_an_aliased_version_needs_force_which_removes_the_aliases(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.set_alias("tone:1", "production")
    registry.set_alias("tone:1", "staging")
    with pytest.raises(ConflictError, match="tone@production, tone@staging point") as info:
        registry.delete("tone:1")
    assert "--force" in (info.value.hint or "") and registry.get("tone@production").ref == "tone:1"
    tomb = registry.delete("tone@production", force=True)
    assert tomb.status == "deleted" and tomb.aliases == [] and registry.aliases("tone") == []
    history = registry.alias_history("tone@production")
    assert [(e["action"], e["from"], e["to"]) for e in history] == [
        ("alias.set", None, "tone:1"), ("alias.remove", "tone:1", None)]
    assert registry.audit_events(name="tone")[0]["after"]["aliases_removed"] == ["production", "staging"]


# -- hard delete and gc ------------------------------------------------------------------------------------------


def test_hard_delete_and_gc_free_files_only_when_nothing_shares_them(registry, tiny, tmp_path):
    registry.register(tiny["tone"], name="a")
    registry.register(tiny["tone"], name="b")  # the same weights and config: one folder, one blob
    alpha = tmp_path / "tone-alpha"
    shutil.copytree(tiny["tone"], alpha)
    config = json.loads((alpha / "adapter_config.json").read_text())
    (alpha / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 16}))
    registry.register(alpha, name="c")  # the same weights, another config: its own folder, the same blob
    folder_ab, blob = files_of(registry, "a:1")
    folder_c, _ = files_of(registry, "c:1")
    assert folder_ab == files_of(registry, "b:1")[0] and folder_c != folder_ab
    nothing = registry.gc(dry_run=True)
    assert nothing["paths"] == [] and nothing["versions"] == []

    registry.delete("a:1", hard=True)
    assert registry.gc()["paths"] == []  # b:1 still uses the folder and the blob
    registry.delete("b:1")  # soft: its files stay
    assert registry.gc()["paths"] == [] and folder_ab.exists()
    registry.delete("b:1", hard=True)  # a soft-deleted version may be purged later
    dry = registry.gc(dry_run=True)
    assert dry["paths"] == [str(folder_ab.relative_to(registry.store.root))] and not dry["applied"]
    assert dry["versions"] == ["a:1", "b:1"] and dry["blobs"] == 0 and dry["bytes"] > 0
    assert folder_ab.exists()  # a dry run deletes nothing
    done = registry.gc()
    assert done["applied"] and done["paths"] == dry["paths"] and not folder_ab.exists()
    assert blob.exists() and (folder_c / "adapter_model.safetensors").exists()  # c:1 shares the blob
    registry.delete("c:1", hard=True)
    last = registry.gc()
    assert sorted(last["paths"]) == sorted(str(p.relative_to(registry.store.root)) for p in (folder_c, blob))
    # the blob was a:1's and b:1's too: every purged version whose files went is named
    assert last["blobs"] == 1 and last["versions"] == ["a:1", "b:1", "c:1"] and not blob.exists()
    with pytest.raises(ConflictError, match="already deleted .* and purged"):
        registry.delete("c:1", hard=True)
    assert registry.audit_events(name=None, limit=1)[0]["action"] == "store.gc"
    assert registry.lineage("c:1").nodes[0].status == "deleted"  # the tombstone outlives its files
    restored = registry.register(alpha, name="c")  # the same files again: the store has them back, the version too
    assert restored.ref == "c:1" and restored.status == "ready"
    assert (Path(restored.path) / "adapter_model.safetensors").exists()


def test_gc_keeps_the_inputs_of_unfinished_jobs(registry, tiny):
    from registry import jobs

    registry.register(tiny["tone"], name="tone")
    version = registry.get("tone:1")
    with registry.service.transaction() as session:
        jobs.insert_job(session, jobs.ValidateSpec(version_id=version.id, ref="tone:1"), queue="cpu")
    registry.delete("tone:1", hard=True)
    assert registry.gc(dry_run=True)["paths"] == []  # a queued validation still needs tone:1's files


# -- jobs ------------------------------------------------------------------------------------------------------


def test_merge_refuses_a_deleted_input_and_warns_on_a_deprecated_one(registry, tiny):
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    registry.deprecate("legal:1", "replaced by legal-v2")
    job = registry.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="linear", name="mix")
    assert job.status == "succeeded"
    assert len(job.warnings) == 1 and job.warnings[0].startswith("input legal:1 is deprecated: replaced by legal-v2")
    assert registry.job(job.id).warnings == job.warnings and job.to_dict()["warnings"] == job.warnings
    registry.delete("tone:1")
    with pytest.raises(AdapterNotFound, match="tone:1 was deleted on"):
        registry.merge(["tone:1", "legal:1"], weights=[0.5, 0.5], method="linear", name="mix2")
    assert [j.id for j in registry.jobs(kind="merge")] == [job.id]


def test_training_a_deprecated_version_warns(registry, tiny, tmp_path):
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.deprecate("tone:1", "superseded")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": "the cat sat on the mat"}) + "\n" for _ in range(4)))
    job = registry.train("tone:1", data=data, steps=1, eval_rows=1)
    assert job.status == "succeeded" and job.warnings == [registry.job(job.id).warnings[0]]
    assert job.warnings[0].startswith("input tone:1 is deprecated: superseded")


# -- rename ----------------------------------------------------------------------------------------------------


def test_rename_keeps_the_old_name_resolving_until_it_is_reused(registry, tiny):
    registry.register(tiny["tone"], name="tone", description="support tone")
    registry.set_alias("tone:1", "production")
    done = registry.rename("tone", "voice")
    assert done == {"old": "tone", "new": "voice", "versions": 1, "former_names": ["tone"]}
    assert registry.get("tone:1").ref == "voice:1" and registry.get("tone@production").ref == "voice:1"
    assert registry.get("tone").name == "voice" and refs(registry.versions_of("tone")) == ["voice:1"]
    assert [a.ref for a in registry.aliases("tone")] == ["voice:1"]
    assert refs(registry.search(name_like="voice")) == ["voice:1"] and registry.search(name_like="tone") == []
    with registry.service.sessions() as session:
        from registry import models as m

        texts = [v.search_text for v in session.query(m.AdapterVersion)]
    assert texts == ["voice support tone"]
    registry.set_alias("voice:1", "staging")
    assert [e["to"] for e in registry.alias_history("voice@production")] == ["tone:1"]  # history across the rename
    assert [e["to"] for e in registry.alias_history("tone@staging")] == ["voice:1"]
    assert [e["action"] for e in registry.audit_events(name="voice")] == ["alias.set", "adapter.rename"]

    with pytest.raises(ConflictError, match="already named"):
        registry.rename("tone", "voice")
    registry.register(tiny["legal"], name="legal")
    with pytest.raises(ConflictError, match="an adapter named 'legal' exists"):
        registry.rename("voice", "legal")
    with pytest.raises(AdapterNotFound):
        registry.rename("nobody", "somebody")

    registry.register(tiny["tone2"], name="tone")  # reuse: the old name now means a new adapter
    assert registry.get("tone").ref == "tone:1" and registry.get("tone").weights_sha256 != registry.get(
        "voice:1").weights_sha256
    assert registry.get("voice@production").ref == "voice:1"
    with pytest.raises(AdapterNotFound, match="has no alias 'production'"):
        registry.get("tone@production")
    registry.rename("voice", "voice2")
    assert registry.get("voice:1").ref == "voice2:1"
    assert registry.rename("voice2", "voice")["former_names"] == ["voice2"]  # back: voice is no former name now


# -- protected aliases -----------------------------------------------------------------------------------------


def test_protected_alias_moves_only_for_an_admin(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.register(tiny["tone2"], name="tone")
    registry.set_alias("tone:1", "production", protect=True)  # embedded: the catalog's owner, an admin
    assert [(a.alias, a.protected) for a in registry.aliases("tone")] == [("production", True)]
    writer, bob = as_user(registry, "bob", grant="tone*")
    with pytest.raises(ProtectedAlias, match="tone@production is protected: only an admin") as info:
        versions.set_alias(writer, "tone:2", "production")
    assert isinstance(info.value, Forbidden)
    with pytest.raises(ProtectedAlias):
        versions.remove_alias(writer, "tone@production")
    with pytest.raises(ProtectedAlias, match="only an admin may protect"):
        versions.set_alias(writer, "tone:2", "staging", protect=True)
    with pytest.raises(ProtectedAlias, match="only an admin may unprotect"):
        versions.set_alias(writer, "tone:1", "production", protect=False)
    with pytest.raises(ProtectedAlias):
        lifecycle.delete(writer, "tone:1", force=True)  # removing it with the version is removing it
    assert versions.set_alias(writer, "tone:2", "staging").aliases == ["staging"]  # unprotected ones move freely
    assert registry.get("tone@production").ref == "tone:1"
    admin, _ = as_user(registry, "alice", admin=True)
    assert versions.set_alias(admin, "tone:2", "production").ref == "tone:2"
    versions.set_alias(admin, "tone:2", "production", protect=False)
    versions.set_alias(writer, "tone:1", "production")  # no longer protected
    history = registry.alias_history("tone@production")
    assert [(e["action"], e["by"], e["to"]) for e in history] == [
        ("alias.set", registry.whoami()["name"], "tone:1"), ("alias.protect", registry.whoami()["name"], "tone:1"),
        ("alias.set", "alice", "tone:2"), ("alias.unprotect", "alice", "tone:2"), ("alias.set", "bob", "tone:1")]


def test_permission_rules_of_the_lifecycle_endpoints(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    svc, bob = as_user(registry, "bob", grant="tone*")
    rules = endpoints.BY_NAME
    rules["deprecate"].rule(bob, {"ref": "tone:1"}, svc)  # write is enough
    rules["rename"].rule(bob, {"old": "tone", "new": "tone-v2"}, svc)
    with pytest.raises(Forbidden, match="may not manage"):
        rules["delete"].rule(bob, {"ref": "tone:1"}, svc)
    with pytest.raises(Forbidden, match="may not write on other"):
        rules["rename"].rule(bob, {"old": "tone", "new": "other"}, svc)
    with pytest.raises(Forbidden, match="not an admin"):
        rules["gc"].rule(bob, {}, svc)
    with pytest.raises(Forbidden):
        lifecycle.gc(svc, dry_run=True)
    carol_svc, carol = as_user(registry, "carol", grant="tone", permission="manage")
    rules["delete"].rule(carol, {"ref": "tone:1", "hard": True}, carol_svc)
    registry.rename("tone", "secret")  # a former name is no way around a grant: the rule checks the new name too
    with pytest.raises(Forbidden, match="secret"):
        rules["set_alias"].rule(bob, {"ref": "tone:1", "alias": "x"}, svc)


def test_a_gated_recipe_promote_may_move_a_protected_alias_an_ungated_one_may_not(registry, tiny):
    registry.register(tiny["tone"], name="tone", base_path=tiny["llama"])
    registry.register(tiny["tone2"], name="legal")
    registry.register(tiny["tone2"], name="mix")
    registry.set_alias("mix:1", "production", protect=True)
    ungated = registry.run_recipe({"name": "pin", "steps": [
        {"name": "pin", "promote": {"target": "tone:1", "alias": "production"}}]})
    assert ungated.status == "succeeded"  # another adapter's alias: tone@production is not protected
    steps = [
        {"name": "merged", "merge": {"sources": ["tone:1", "legal:1"], "weights": [0.5, 0.5], "method": "linear",
                                     "name": "mix"}},
        {"name": "promote", "promote": {"target": "@merged", "alias": "production"}},
    ]
    refused = registry.run_recipe({"name": "no-gate", "steps": steps})
    assert refused.status == "failed" and "mix@production is protected" in refused.message
    assert registry.get("mix@production").ref == "mix:1"
    gated = registry.run_recipe({"name": "gated", "steps": [
        steps[0], {"name": "check", "validate": {"target": "@merged", "gates": {"max_distance_from": {
            "tone:1": 100.0}}}}, steps[1]]})
    assert gated.status == "succeeded", gated.message
    assert registry.get("mix@production").ref == "mix:2" and registry.aliases("mix")[0].protected
    assert registry.alias_history("mix@production")[-1]["by"] == f"recipe gated (run {gated.id})"


def test_a_protected_alias_refusal_crosses_http_as_403(server, tiny):
    from registry.remote import RemoteRegistry

    with RemoteRegistry(server.url, token=server.admin_token) as admin:
        admin.register(tiny["tone"], name="tone")
        admin.register(tiny["tone2"], name="tone")
        admin.set_alias("tone:1", "production", protect=True)
        admin.add_user("bob")
        admin.add_grant("bob", "tone", "write")
        token = admin.create_token("bob")["token"]
    with RemoteRegistry(server.url, token=token) as bob:
        with pytest.raises(ProtectedAlias, match="tone@production is protected"):
            bob.set_alias("tone:2", "production")
        with pytest.raises(Forbidden, match="may not manage on tone"):
            bob.delete("tone:2")
        answer = bob.client.post("/v1/aliases/set", json={"ref": "tone:2", "alias": "production"})
        assert answer.status_code == 403 and answer.json()["error"] == "ProtectedAlias"
        assert bob.deprecate("tone:2", "bob says no").status == "deprecated"


# -- CLI -------------------------------------------------------------------------------------------------------


def test_cli_lifecycle(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "tone")
    adreg("register", str(tiny["tone2"]), "--name", "tone")
    out = json.loads(adreg("deprecate", "tone:1", "--reason", "old", "--json").stdout)
    assert (out["status"], out["status_reason"]) == ("deprecated", "old")
    listed = json.loads(adreg("list", "--json").stdout)["items"]
    assert [(v["ref"], v["status"]) for v in listed] == [("tone:2", "ready"), ("tone:1", "deprecated")]
    assert "(deprecate" in adreg("list").stdout  # marked in the table (80 columns fold it)
    assert "tone:1: ready" in adreg("undeprecate", "tone:1").stdout
    refused = adreg("alias", "set", "tone:1", "production", "--protect", "--json")
    assert json.loads(refused.stdout)["aliases"] == ["production"]
    assert "(protected)" in adreg("alias", "list", "tone").stdout
    assert "(protected)" in adreg("alias", "history", "tone@production").stdout
    no = adreg("delete", "tone:2", code=1)  # not a terminal and no --yes: nothing is deleted
    assert "without confirmation" in no.stderr and "--yes" in no.stderr
    adreg("delete", "tone:1", "--yes", code=1)  # aliased
    gone = json.loads(adreg("delete", "tone:2", "--hard", "--json").stdout)
    assert gone["status"] == "deleted"
    dry = json.loads(adreg("gc", "--dry-run", "--json").stdout)
    assert dry["applied"] is False and dry["versions"] == ["tone:2"]
    assert "would remove" in adreg("gc").stdout
    assert json.loads(adreg("gc", "--apply", "--json").stdout)["versions"] == ["tone:2"]
    adreg("gc", "--apply", "--dry-run", code=1)
    assert [v["ref"] for v in json.loads(adreg("list", "--json").stdout)["items"]] == ["tone:1"]
    assert [v["ref"] for v in json.loads(adreg("list", "--status", "deleted", "--json").stdout)["items"]] == ["tone:2"]
    assert "(delete" in adreg("list", "--status", "deleted").stdout
    renamed = json.loads(adreg("rename", "tone", "voice", "--json").stdout)
    assert renamed["new"] == "voice"
    shown = adreg("show", "tone:1")
    assert "voice:1" in shown.stdout and "tone was renamed to voice" in shown.stderr


def test_cli_merge_prints_the_deprecation_warning(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "tone", "--base-path", str(tiny["llama"]))
    adreg("register", str(tiny["tone2"]), "--name", "legal")
    adreg("deprecate", "legal:1", "--reason", "use legal-v2")
    merged = adreg("merge", "tone:1", "legal:1", "--weights", "0.5", "0.5", "--method", "linear", "--name", "mix",
                   "--json")
    assert "warning: input legal:1 is deprecated: use legal-v2" in merged.stderr
    assert json.loads(merged.stdout)["warnings"][0].startswith("input legal:1 is deprecated")
