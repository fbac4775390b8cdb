"""`adreg alias history NAME@ALIAS`: every move of an alias (from, to, who, when), recipe promotions included."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from registry.auth import os_user
from registry.cli import app
from registry.errors import InvalidReference


def moves(history):  # type: ignore[no-untyped-def]
    return [(e["by"], e["from"], e["to"]) for e in history]


def test_every_move_is_recorded_in_order_with_its_actor(registry, tiny):
    registry.register(tiny["tone"], name="tone")
    registry.register(tiny["tone2"], name="tone")
    registry.set_alias("tone:1", "production")
    registry.set_alias("tone:2", "production")
    registry.remove_alias("tone@production")
    registry.run_recipe({"name": "promote-again", "steps": [
        {"name": "back", "promote": {"target": "tone:1", "alias": "production"}}]})
    run_id = registry.runs()[0].id
    me = os_user()
    assert moves(registry.alias_history("tone@production")) == [
        (me, None, "tone:1"), (me, "tone:1", "tone:2"), (me, "tone:2", None),
        (f"recipe promote-again (run {run_id})", None, "tone:1")]
    assert registry.alias_history("tone@staging") == []
    with pytest.raises(InvalidReference):
        registry.alias_history("tone:1")


def test_history_through_a_server_and_the_cli(server, tiny, monkeypatch):
    from registry.remote import RemoteRegistry

    with RemoteRegistry(server.url, token=server.admin_token) as remote:
        remote.register(tiny["tone"], name="tone")
        remote.set_alias("tone:1", "production")
        assert moves(remote.alias_history("tone@production")) == [("admin", None, "tone:1")]
    monkeypatch.setenv("ADREG_URL", server.url)
    monkeypatch.setenv("ADREG_TOKEN", server.admin_token)
    result = CliRunner().invoke(app, ["alias", "history", "tone@production", "--json"])
    assert result.exit_code == 0, result.output
    assert moves(json.loads(result.stdout)) == [("admin", None, "tone:1")]
