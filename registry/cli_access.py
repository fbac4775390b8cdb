"""``adreg`` commands of a team registry: serve, users, tokens, grants, audit, login, whoami, pull.

They sit on the same facade as every other command (embedded, or a server through ``--url`` / ``ADREG_URL`` /
``adreg login``); :func:`install` adds them to the main app.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from registry.cli_output import emits, stderr, stdout, table

JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
user_app = typer.Typer(help="Users of the server's API.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens (shown once, stored only as a hash).", no_args_is_help=True)
grant_app = typer.Typer(help="Who may write or manage which adapter names (glob patterns).", no_args_is_help=True)


def install(app: typer.Typer, registry: Callable[[], Any], state: dict[str, Any]) -> None:
    """Add these commands to ``app``; ``registry()`` opens the facade the global options name."""
    app.add_typer(user_app, name="user")
    app.add_typer(token_app, name="token")
    app.add_typer(grant_app, name="grant")

    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
        port: int = typer.Option(8080, "--port", min=1, max=65535),
        workers: int = typer.Option(1, "--workers", min=1, max=64, help="Server processes (each a thread pool)."),
        log_level: str = typer.Option("info", "--log-level"),
    ) -> None:
        """Serve the catalog over HTTP: the API (OpenAPI at /openapi.json, /healthz and /readyz) and the web page at /.

        No users yet: on a loopback address it makes you an admin and prints a sign-in link; elsewhere it refuses."""
        import uvicorn

        from registry.config import Settings
        from registry.errors import RegistryError
        from registry.service import Service

        if os.environ.get("ADREG_URL") or state.get("url"):
            from registry.cli_output import fail

            fail(RegistryError("adreg serve serves a catalog of its own: unset ADREG_URL / --url"))
        if state.get("db"):  # the server processes read the catalog's location from the environment
            os.environ["ADREG_DATABASE_URL"] = str(state["db"])
        if state.get("home"):
            os.environ["ADREG_HOME"] = str(state["home"])
        svc = Service(Settings.from_env())
        from registry.web import quickstart

        try:  # a catalog with no users: a sign-in link on a loopback address, refused elsewhere
            link = quickstart.first_sign_in(svc, host, port)
        except RegistryError as exc:
            from registry.cli_output import fail

            fail(exc)
        if svc.settings.broker_url:  # workers on other hosts have no catalog: the server sweeps for lost jobs
            import threading

            from workers.recovery import recovery_loop

            threading.Thread(target=recovery_loop, args=(None, lambda: svc), daemon=True,
                             name="adreg-recovery").start()
        stderr.print(f"serving {escape(svc.engine.url.render_as_string(hide_password=True))} on "
                     f"{quickstart.base_url(host, port)}", highlight=False)
        if link:  # printed once, here; the token sits after '#', which no browser sends, so no log line holds it
            stdout.print(f"no users yet: created admin {link['user']}; sign in within {quickstart.EXPIRES} with this "
                         f"link (shown once):\n  {link['url']}", markup=False, highlight=False, soft_wrap=True)
        uvicorn.run("registry.cli_access:app_from_environment", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, timeout_keep_alive=15, server_header=False)

    @app.command()
    @emits(lambda d: stdout.print(f"logged in to {d['url']} as {d['name']} (scope {d['scope']})", markup=False))
    def login(
        url: str = typer.Argument(..., help="The server, e.g. https://adreg.example.com"),
        token: str | None = typer.Option(None, "--token", envvar="ADREG_TOKEN",
                                         help="API token (asked for, hidden, when not given)."),
        json_output: bool = JSON,
    ) -> dict[str, Any]:
        """Check a token against a server and keep both for later commands (a 0600 file in your config dir)."""
        from registry.login import save_login
        from registry.remote import RemoteRegistry

        secret = token or typer.prompt("API token", hide_input=True)
        with RemoteRegistry(url, token=secret) as reg:
            who = reg.whoami()
        path = save_login(url.rstrip("/"), secret)
        return {"url": url.rstrip("/"), "name": who["name"], "scope": who["scope"], "file": str(path)}

    @app.command()
    @emits(lambda d: stdout.print("logged out" if d["removed"] else "was not logged in"))
    def logout(json_output: bool = JSON) -> dict[str, Any]:
        """Forget the server and token `adreg login` saved."""
        from registry.login import forget_login

        return {"removed": forget_login()}

    @app.command()
    @emits(lambda d: stdout.print(f"{d['name']} ({'admin' if d['is_admin'] else 'user'}, scope {d['scope']})"
                                  + "".join(f"\n  {g['permission']} {g['pattern']}" for g in d["grants"]),
                                  markup=False))
    def whoami(json_output: bool = JSON) -> dict[str, Any]:
        """Who the current credentials act as."""
        return registry().whoami()

    @app.command()
    @emits(lambda d: stdout.print(f"{d['ref']} -> {d['folder']}", markup=False))
    def pull(
        ref: str = typer.Argument(..., help="name, name:3 or name@alias"),
        folder: Path = typer.Argument(..., help="A new (or empty) folder to write the adapter into."),
        json_output: bool = JSON,
    ) -> dict[str, Any]:
        """Download a version (config + weights, sha256 verified) into FOLDER, loadable by PEFT."""
        reg = registry()
        version = reg.get(ref)
        return {"ref": version.ref, "folder": str(reg.download(version.ref, folder)),
                "weights_sha256": version.weights_sha256}

    @app.command()
    @emits(_render_audit)
    def audit(
        name: str | None = typer.Option(None, "--name", help="Only events of this adapter."),
        since: str | None = typer.Option(None, "--since", help="A duration (7d, 12h) or an ISO time."),
        limit: int = typer.Option(200, "--limit", min=1, max=1000),
        json_output: bool = JSON,
    ) -> list[dict[str, Any]]:
        """Who registered, moved an alias, changed tags, submitted or cancelled a job, or changed access."""
        return registry().audit_events(name=name, since=since, limit=limit)

    @user_app.command("add")
    @emits(lambda d: stdout.print(f"user {d['name']} added" + (" (admin)" if d["is_admin"] else ""), markup=False))
    def user_add(name: str = typer.Argument(...), admin: bool = typer.Option(False, "--admin"),
                 group: list[str] = typer.Option(None, "--group", "-g", help="Repeatable."),
                 json_output: bool = JSON) -> dict[str, Any]:
        """Create a user (then give it a token: adreg token create --user NAME)."""
        return registry().add_user(name, admin=admin, groups=list(group or []))

    @user_app.command("list")
    @emits(lambda rows: table(None, ["name", "admin", "groups", "disabled"],
                              [[r["name"], r["is_admin"], ", ".join(r.get("groups") or []), r.get("disabled")]
                               for r in rows]))
    def user_list(json_output: bool = JSON) -> list[dict[str, Any]]:
        """Users, their groups and whether they are admins."""
        return registry().users()

    @token_app.command("create")
    @emits(_render_new_token)
    def token_create(
        user: str = typer.Option(..., "--user", "-u"),
        scope: str = typer.Option("write", "--scope", help="read, write or admin."),
        expires: str | None = typer.Option(None, "--expires", help="A duration: 30d, 12h, 2w."),
        label: str | None = typer.Option(None, "--label"),
        json_output: bool = JSON,
    ) -> dict[str, Any]:
        """Create an API token; it is printed once and stored only as a hash."""
        return registry().create_token(user, scope=scope, expires=expires, label=label)

    @token_app.command("list")
    @emits(lambda rows: table(None, ["id", "user", "scope", "label", "created", "expires", "revoked", "last used"],
                              [[r.get("id"), r.get("user"), r.get("scope"), r.get("label"), r.get("created_at"),
                                r.get("expires_at"), r.get("revoked_at"), r.get("last_used_at")] for r in rows]))
    def token_list(user: str | None = typer.Option(None, "--user", "-u"), json_output: bool = JSON) -> Any:
        """Tokens (never their secrets)."""
        return registry().tokens(user)

    @token_app.command("revoke")
    @emits(lambda d: stdout.print(f"token {d.get('id')} revoked", markup=False))
    def token_revoke(token_id: int = typer.Argument(...), json_output: bool = JSON) -> dict[str, Any]:
        """Revoke a token; requests with it are refused at once."""
        return registry().revoke_token(token_id)

    @grant_app.command("add")
    @emits(lambda d: stdout.print(f"{d['subject']} may {d['permission']} {d['pattern']}", markup=False))
    def grant_add(subject: str = typer.Argument(..., help="A user name, or group:NAME."),
                  pattern: str = typer.Argument(..., help="Adapter names, e.g. cx-*"),
                  permission: str = typer.Option("write", "--permission", "-p", help="read, write or manage."),
                  json_output: bool = JSON) -> dict[str, Any]:
        """Let a user or group:NAME read, write or manage the adapter names a glob matches."""
        return registry().add_grant(subject, pattern, permission)

    @grant_app.command("rm")
    @emits(lambda d: stdout.print(f"grant {d['subject']} {d['pattern']} removed", markup=False))
    def grant_rm(subject: str = typer.Argument(...), pattern: str = typer.Argument(...),
                 json_output: bool = JSON) -> dict[str, Any]:
        """Remove a grant."""
        return registry().remove_grant(subject, pattern)

    @grant_app.command("list")
    @emits(lambda rows: table(None, ["subject", "pattern", "permission"],
                              [[r["subject"], r["pattern"], r["permission"]] for r in rows]))
    def grant_list(subject: str | None = typer.Option(None, "--subject"), json_output: bool = JSON) -> Any:
        """Grants (of one subject with --subject)."""
        return registry().grants(subject)


def _render_audit(rows: list[dict[str, Any]]) -> None:
    def change(row: dict[str, Any]) -> str:
        before, after = row.get("before"), row.get("after")
        parts = [f"{before}" if before else "", f"-> {after}" if after else ""]
        return " ".join(p for p in parts if p)

    table(None, ["time", "user", "action", "ref", "change"],
          [[r["at"][:19].replace("T", " "), r["actor"], r["action"], r.get("ref") or r.get("adapter_name"),
            change(r)] for r in rows])


def _render_new_token(data: dict[str, Any]) -> None:
    stdout.print(data["token"], markup=False, highlight=False)
    stderr.print(f"token {data['id']} for {escape(data['user'])} (scope {data['scope']}"
                 + (f", expires {data['expires_at']}" if data.get("expires_at") else "")
                 + "): shown once, store it now", highlight=False)


def app_from_environment() -> Any:
    """The API app over the catalog the environment names (what each ``adreg serve`` process builds)."""
    from registry.api.app import create_app
    from registry.config import Settings
    from registry.service import Service
    from workers.runners import run_job

    return create_app(Service(Settings.from_env(), local_runner=run_job))
