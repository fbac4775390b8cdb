"""``adreg``: the command line over the SDK. Every command that returns data takes ``--json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from registry import types as t
from registry.cli_output import emits, human_size, stdout, table
from registry.queries import SearchFilters
from registry.refs import parse_tag

app = typer.Typer(
    help="A catalog and job pipeline for LoRA adapters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
alias_app = typer.Typer(help="Movable names (production, staging) for versions.", no_args_is_help=True)
base_app = typer.Typer(help="Base models known to the catalog.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")
app.add_typer(base_app, name="base")

JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
_state: dict[str, Any] = {}


@app.callback()
def _main(
    db: str | None = typer.Option(None, "--db", envvar="ADREG_DATABASE_URL", help="Catalog database URL."),
    home: Path | None = typer.Option(None, "--home", envvar="ADREG_HOME", help="Embedded catalog folder."),
) -> None:
    _state.clear()
    _state.update(db=db, home=home)


def _registry():  # type: ignore[no-untyped-def]
    from registry.sdk import Registry

    if "registry" not in _state:
        _state["registry"] = Registry(_state.get("db"), home=_state.get("home"))
    return _state["registry"]


def _tags(values: list[str] | None) -> dict[str, str]:
    return dict(parse_tag(v) for v in values or [])


# -- rendering ------------------------------------------------------------------------------------


def _render_version(v: t.AdapterVersion) -> None:
    rank = f"{v.r}" + (f" (pattern: {v.rank_pattern})" if v.rank_pattern else "")
    alpha = f"{v.lora_alpha:g}" + (" rsLoRA" if v.use_rslora else "") + (" DoRA" if v.use_dora else "")
    rows = [
        ["version", v.ref],
        ["base", f"{v.base_model}" + (f" @ {v.base_revision}" if v.base_revision else "")],
        ["task", v.task_type],
        ["rank / alpha", f"{rank} / {alpha}"],
        ["targets", ", ".join(v.target_modules) + f"  ({v.module_count} modules)"],
        ["size", f"{human_size(v.size_bytes)}, {v.param_count:,} params, {', '.join(v.dtypes)}"],
        ["sha256", v.weights_sha256],
        ["tags", ", ".join(f"{k}={val}" for k, val in sorted(v.tags.items())) or "-"],
        ["aliases", ", ".join(v.aliases) or "-"],
        ["parents", ", ".join(
            f"{p.ref} ({p.relation}" + (f", w={p.weight:g}" if p.weight is not None else "") + ")" for p in v.parents
        ) or "-"],
        ["compatible", ", ".join(f"{c.base_model} [{c.level}]" for c in v.compatible) or "-"],
        ["path", v.path],
        ["created", v.created_at.strftime("%Y-%m-%d %H:%M:%S")],
    ]
    table(None, ["field", "value"], rows)


def _render_versions(items: list[t.AdapterVersion] | t.SearchPage) -> None:
    page = items if isinstance(items, t.SearchPage) else None
    versions = page.items if page else items
    table(
        None,
        ["version", "base", "r", "alpha", "targets", "size", "tags", "aliases"],
        [[v.ref, v.base_model, v.r, f"{v.lora_alpha:g}", ",".join(v.target_modules), human_size(v.size_bytes),
          ",".join(f"{k}={val}" for k, val in sorted(v.tags.items())), ",".join(v.aliases)] for v in versions],
    )
    if page is not None:
        shown = f"{page.offset + 1}-{page.offset + len(versions)}" if versions else "0"
        stdout.print(f"[dim]{shown} of {page.total}[/]")


def _render_lineage(g: t.LineageGraph) -> None:
    stdout.print(f"lineage of [bold]{g.root}[/]: {len(g.nodes)} version(s), {len(g.edges)} edge(s)")
    if not g.edges:
        return
    table(None, ["child", "relation", "parent", "weight", "position"],
          [[e.child, e.relation, e.parent, "" if e.weight is None else f"{e.weight:g}", e.position] for e in g.edges])


def _render_bases(bases: list[t.BaseModelInfo]) -> None:
    table(None, ["name", "revision", "architecture", "modules", "vocab", "versions", "local path"],
          [[b.name, b.revision or "-", b.architecture, b.module_count, b.vocab_size, b.adapter_versions,
            b.local_path or "-"] for b in bases])


# -- commands ------------------------------------------------------------------------------------


@app.command()
@emits(lambda d: stdout.print(f"catalog ready at {d['database']} (schema {d['revision']})"))
def init(json_output: bool = JSON) -> dict[str, str]:
    """Create the catalog, or upgrade its schema to this version's."""
    from registry.db import head_revision
    from registry.sdk import Registry

    url = Registry.init(_state.get("db"), home=_state.get("home"))
    return {"database": url, "revision": head_revision()}


@app.command()
@emits(_render_version)
def register(
    source: str = typer.Argument(..., help="Adapter folder (PEFT layout, safetensors weights)."),
    name: str = typer.Option(..., "--name", "-n", help="Adapter name (a lowercase slug)."),
    tag: list[str] = typer.Option(None, "--tag", "-t", help="key=value; repeatable."),
    base: str | None = typer.Option(None, "--base", help="Base model name or Hub id (default: from the config)."),
    base_path: Path | None = typer.Option(None, "--base-path", help="Local base model folder to read shapes from."),
    revision: str | None = typer.Option(None, "--revision", help="Base model revision."),
    description: str | None = typer.Option(None, "--description", "-d"),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Register an adapter folder as the next version of NAME."""
    return _registry().register(
        source, name=name, tags=_tags(tag), base=base, base_path=base_path, revision=revision,
        description=description,
    )


@app.command("list")
@emits(_render_versions)
def list_(
    base_model: str | None = typer.Option(None, "--base-model", "-b", help="Base model name or local folder."),
    tag: list[str] = typer.Option(None, "--tag", "-t", help="key=value; repeat to AND several."),
    task_type: str | None = typer.Option(None, "--task-type"),
    peft_type: str | None = typer.Option(None, "--peft-type"),
    min_rank: int | None = typer.Option(None, "--min-rank"),
    max_rank: int | None = typer.Option(None, "--max-rank"),
    target: str | None = typer.Option(None, "--target", help="Has this target module (e.g. q_proj)."),
    name: str | None = typer.Option(None, "--name", help="Name contains this text."),
    status: str = typer.Option("ready", "--status", help="ready, deprecated, ... or 'any'."),
    sort: str = typer.Option("created", "--sort", help="created, name, version, rank or size."),
    ascending: bool = typer.Option(False, "--asc", help="Sort ascending."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    offset: int = typer.Option(0, "--offset", min=0),
    json_output: bool = JSON,
) -> t.SearchPage:
    """Search adapter versions."""
    from registry.errors import RegistryError

    if sort not in ("created", "name", "version", "rank", "size"):
        raise RegistryError(f"--sort must be one of created, name, version, rank, size (got {sort!r})")
    filters = SearchFilters(
        base_model=base_model, tags=_tags(tag), task_type=task_type, peft_type=peft_type, min_rank=min_rank,
        max_rank=max_rank, target_module=target, name_like=name, status=None if status == "any" else status,
        sort=sort, descending=not ascending, limit=limit, offset=offset,
    )
    return _registry().search_page(filters)


@app.command()
@emits(_render_version)
def show(
    ref: str = typer.Argument(..., help="name, name:3 or name@alias"), json_output: bool = JSON
) -> t.AdapterVersion:
    """Show one version: base, rank, targets, size, sha256, tags, aliases, parents, compatibility."""
    return _registry().get(ref)


@app.command()
@emits(_render_version)
def tag(
    ref: str = typer.Argument(...),
    tags: list[str] = typer.Argument(..., help="key=value pairs"),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Set tags on a version."""
    return _registry().tag(ref, _tags(tags))


@app.command()
@emits(_render_version)
def untag(ref: str = typer.Argument(...), keys: list[str] = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Remove tags (by key) from a version."""
    return _registry().untag(ref, keys)


@app.command()
@emits(_render_lineage)
def lineage(ref: str = typer.Argument(...), json_output: bool = JSON) -> t.LineageGraph:
    """Ancestors and descendants of a version."""
    return _registry().lineage(ref)


@alias_app.command("set")
@emits(lambda v: stdout.print(f"{v.name}@{', '.join(v.aliases)} -> {v.ref}"))
def alias_set(ref: str = typer.Argument(...), alias: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Point ALIAS at the version REF (moving it if it exists)."""
    return _registry().set_alias(ref, alias)


@alias_app.command("rm")
@emits(lambda d: stdout.print(f"removed {d['name']}@{d['alias']}"))
def alias_rm(name: str = typer.Argument(...), alias: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Remove an alias."""
    _registry().remove_alias(name, alias)
    return {"name": name, "alias": alias}


@base_app.command("list")
@emits(_render_bases)
def base_list(json_output: bool = JSON) -> list[t.BaseModelInfo]:
    """Base models with their architecture and how many versions fit them."""
    return _registry().base_models()


def _render_demo(report: Any) -> None:
    table("adreg demo", ["step", "seconds"], [[s["step"], f"{s['seconds']:.2f}"] for s in report.steps])
    graph = report.lineage
    if graph.get("edges"):
        table(f"lineage of {graph['root']}", ["child", "relation", "parent", "weight"],
              [[e["child"], e["relation"], e["parent"], e["weight"]] for e in graph["edges"]])
    stdout.print(f"catalog:   {report.catalog}\nartifacts: {report.artifacts}\ndemo files: {report.workdir}")
    stdout.print("next: [bold]adreg list[/], [bold]adreg show demo-legal@production[/]")


@app.command()
@emits(_render_demo)
def demo(json_output: bool = JSON) -> Any:
    """Build a tiny base and three adapters with PEFT, register and merge them, show the lineage."""
    from workers.demo import run_demo

    reg = _registry()
    if json_output:
        return run_demo(reg)
    with stdout.status("starting") as status:
        return run_demo(reg, say=lambda msg: status.update(msg))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
