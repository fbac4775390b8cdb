"""``adreg``: the command line over the SDK. Every command that returns data takes ``--json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import typer
from rich.markup import escape
from typer.core import TyperCommand

from registry import types as t
from registry.cli_output import activity, emits, human_size, stderr, stdout, table
from registry.job_reports import validation_rows
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
schedule_app = typer.Typer(help="Recipes fired on a cron schedule or when an alias moves.", no_args_is_help=True)
recipe_app = typer.Typer(help="Recipe files.", no_args_is_help=True)
app.add_typer(alias_app, name="alias")
app.add_typer(base_app, name="base")
app.add_typer(schedule_app, name="schedule")
app.add_typer(recipe_app, name="recipe")
data_app = typer.Typer(help="Datasets: data files pinned by sha256, linked to versions.", no_args_is_help=True)
app.add_typer(data_app, name="data")

JSON = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
IDEMPOTENCY = typer.Option(
    None, "--idempotency-key", help="Submitting again with the same key returns the first job (safe retries).")
_state: dict[str, Any] = {}


@app.callback()
def _main(
    db: str | None = typer.Option(None, "--db", envvar="ADREG_DATABASE_URL", help="Catalog database URL."),
    home: Path | None = typer.Option(None, "--home", envvar="ADREG_HOME", help="Embedded catalog folder."),
    url: str | None = typer.Option(None, "--url", envvar="ADREG_URL",
                                   help="An adreg server (then ADREG_TOKEN or `adreg login` give the token)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Let libraries print their own progress and warnings."),
) -> None:
    import os

    _state.clear()
    _state.update(db=db, home=home, url=url)
    if verbose:
        os.environ["ADREG_VERBOSE"] = "1"  # read where the workers load models (workers.quiet)


def _registry():  # type: ignore[no-untyped-def]
    from registry.sdk import Registry

    if "registry" not in _state:
        reg = Registry(_state.get("url") or _state.get("db"), home=_state.get("home"), on_progress=activity.job)
        if hasattr(reg, "on_upload"):  # a server: uploads show their progress on the same status line
            reg.on_upload = activity.transfer
        _state["registry"] = reg
    return _state["registry"]


def _tags(values: list[str] | None) -> dict[str, str]:
    return dict(parse_tag(v) for v in values or [])


# -- rendering ------------------------------------------------------------------------------------


_LEVELS = {"declared": "declared, shapes not checked"}


def _render_version(v: t.AdapterVersion) -> None:
    rank = f"{v.r}" + (f" (pattern: {v.rank_pattern})" if v.rank_pattern else "")
    alpha = f"{v.lora_alpha:g}" + (" rsLoRA" if v.use_rslora else "") + (" DoRA" if v.use_dora else "")
    rows = [
        ["version", v.ref],
        ["status", v.status + (f" ({v.status_reason})" if v.status_reason else "")],
        ["base", f"{v.base_model}" + (f" @ {v.base_revision}" if v.base_revision else "")],
        ["task", v.task_type],
        ["rank / alpha", f"{rank} / {alpha}"],
        ["targets", ", ".join(v.target_modules) + f"  ({v.module_count} modules)"],
        ["size", f"{human_size(v.size_bytes)}, {v.param_count:,} params, {', '.join(v.dtypes)}"],
        ["sha256", v.weights_sha256],
        ["tags", ", ".join(f"{k}={val}" for k, val in sorted(v.tags.items())) or "-"],
        ["aliases", ", ".join(v.aliases) or "-"],
        ["description", v.description or "-"],
        ["adapter", v.adapter_description or "-"],
        ["metrics", ", ".join(f"{x.name}={x.value:.4g}" + (f" [{x.dataset}]" if x.dataset else "") for x in v.metrics)
         or "-"],
        ["datasets", ", ".join(f"{d.ref} ({d.role}, {d.rows} rows)" for d in v.datasets) or "-"],
        ["parents", ", ".join(
            f"{p.ref} ({p.relation}" + (f", w={p.weight:g}" if p.weight is not None else "") + ")" for p in v.parents
        ) or "-"],
        ["compatible", ", ".join(f"{c.base_model} [{_LEVELS.get(c.level, c.level)}]" for c in v.compatible) or "-"],
        ["path", v.path],
        ["created", v.created_at.strftime("%Y-%m-%d %H:%M:%S")],
    ]
    table(None, ["field", "value"], rows)


def _brief(v: t.AdapterVersion, width: int = 40) -> str:
    """The version's description (else its adapter's) on one line, cut to ``width`` characters."""
    text = " ".join((v.description or v.adapter_description or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _render_versions(items: list[t.AdapterVersion] | t.SearchPage) -> None:
    page = items if isinstance(items, t.SearchPage) else None
    versions = page.items if page else items
    described = any(_brief(v) for v in versions)  # a description column only when there is one to show
    columns = ["version", "base", "r", "alpha", "targets", "size", "tags", "aliases"]
    rows = [[v.ref if v.status == "ready" else f"{v.ref} ({v.status})", v.base_model, v.r, f"{v.lora_alpha:g}",
             ",".join(v.target_modules), human_size(v.size_bytes),
             ",".join(f"{k}={val}" for k, val in sorted(v.tags.items())), ",".join(v.aliases)] for v in versions]
    if described:
        columns.append("description")
        for row, v in zip(rows, versions, strict=True):
            row.append(_brief(v))
    table(None, columns, rows)
    if page is not None:
        shown = f"{page.offset + 1}-{page.offset + len(versions)}" if versions else "0"
        stdout.print(f"[dim]{shown} of {page.total}[/]")


def _render_lineage(g: t.LineageGraph) -> None:
    from rich.tree import Tree

    from registry.lineage_render import to_tree_lines

    rows = to_tree_lines(g)
    root = Tree(f"[bold]{escape(g.root)}[/]  [dim]{len(g.nodes)} version(s), {len(g.edges)} edge(s)[/]")
    stack = [root]
    for depth, ref, edge in rows[1:]:
        del stack[depth:]
        label = f"[dim]{ref}[/]" if ref in ("ancestors", "descendants") else escape(ref)
        stack.append(stack[-1].add(label + (f"  [cyan]{escape(edge)}[/]" if edge else "")))
    stdout.print(root)


def _render_bases(bases: list[t.BaseModelInfo]) -> None:
    table(None, ["short name", "name", "revision", "architecture", "modules", "vocab", "versions", "local path"],
          [[b.short_name or "-", b.name, b.revision or "-", b.architecture, b.module_count, b.vocab_size,
            b.adapter_versions, b.local_path or "-"] for b in bases])


# -- commands ------------------------------------------------------------------------------------


def _render_init(data: dict[str, Any]) -> None:
    stdout.print(f"catalog ready at {data['database']} (schema {data['revision']})", markup=False)
    if data.get("admin"):
        stderr.print(f"admin {escape(data['admin'])} created; its token (shown once, store it now):", highlight=False)
        stdout.print(data["token"], markup=False, highlight=False)


@app.command()
@emits(_render_init)
def init(
    admin: str | None = typer.Option(None, "--admin", help="Create this first admin user and print its token once."),
    json_output: bool = JSON,
) -> dict[str, Any]:
    """Create the catalog, or upgrade its schema to this version's."""
    from registry.db import head_revision
    from registry.sdk import Registry

    url = Registry.init(_state.get("db"), home=_state.get("home"))
    done: dict[str, Any] = {"database": url, "revision": head_revision()}
    if admin:
        with Registry(_state.get("db"), home=_state.get("home")) as reg:
            reg.add_user(admin, admin=True)
            token = reg.create_token(admin, scope="admin", label="created by adreg init")
        done.update(admin=admin, token=token["token"], token_id=token["id"])
    return done


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
    eval_data: list[str] = typer.Option(None, "--eval-data", help="A catalog dataset (name or name:N) to link "
                                        "as eval data; repeatable."),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Register an adapter folder as the next version of NAME."""
    registry = _registry()
    eval_sets = [registry.dataset(ref).ref for ref in eval_data or []]  # refused before anything is registered
    version = registry.register(
        source, name=name, tags=_tags(tag), base=base, base_path=base_path, revision=revision,
        description=description,
    )
    for ref in eval_sets:
        version = registry.link_dataset(version.ref, ref, role="eval")
    if not any(c.level != "declared" for c in version.compatible):
        stderr.print(f"[yellow]warning:[/] the shapes of base model {escape(str(version.base_model))} were not "
                     "checked (its config.json was not read); pass --base-path DIR to check them", highlight=False)
    return version


@app.command("list")
@emits(lambda page: _render_listing(page))  # metrics (issue 15): with the metric columns it filters/sorts on
def list_(
    base_model: str | None = typer.Option(None, "--base-model", "--base", "-b",
                                          help="Base model: short name, name or local folder."),
    compatible_with: str | None = typer.Option(
        None, "--compatible-with", help="Fits this base (short name, name or folder), whatever it was registered on."),
    tag: list[str] = typer.Option(None, "--tag", "-t", help="key=value; repeat to AND several."),
    task_type: str | None = typer.Option(None, "--task-type"),
    peft_type: str | None = typer.Option(None, "--peft-type"),
    min_rank: int | None = typer.Option(None, "--min-rank"),
    max_rank: int | None = typer.Option(None, "--max-rank"),
    target: str | None = typer.Option(None, "--target", help="Has this target module (e.g. q_proj)."),
    name: str | None = typer.Option(None, "--name", help="Name contains this text."),
    status: str = typer.Option(
        "live", "--status", help="live (ready and deprecated), ready, deprecated, deleted or any."),
    query: str | None = typer.Option(None, "--query", "-q", help="Full-text search of names, descriptions, tags."),
    where: str | None = typer.Option(None, "--where", help='Metric conditions, e.g. "eval_loss<2.5 and '
                                     'accuracy[glue]>=0.9" (< <= > >= = !=; "and" or ",").'),
    sort: str | None = typer.Option(None, "--sort", help="relevance (the default with --query), created (the "
                                    "default otherwise), name, version, rank, size, metric:NAME or "
                                    "metric:NAME[DATASET] (versions lacking the metric come last)."),
    ascending: bool = typer.Option(False, "--asc", help="Sort ascending."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    offset: int = typer.Option(0, "--offset", min=0),
    json_output: bool = JSON,
) -> t.SearchPage:
    """Search adapter versions."""
    filters = SearchFilters(
        base_model=base_model, tags=_tags(tag), task_type=task_type, peft_type=peft_type, min_rank=min_rank,
        max_rank=max_rank, target_module=target, name_like=name, status=None if status == "any" else status,
        query=query, where=where, sort=sort, descending=not ascending, limit=limit, offset=offset,
        compatible_with=compatible_with,
    )
    page = _registry().search_page(filters)
    _state["listed_metrics"] = _listed_metrics(where, sort)  # metrics (issue 15)
    return page


@app.command()
@emits(_render_version)
def show(
    ref: str = typer.Argument(..., help="name, name:3 or name@alias"), json_output: bool = JSON
) -> t.AdapterVersion:
    """Show one version: base, rank, targets, size, sha256, tags, aliases, parents, compatibility."""
    version = _registry().get(ref)
    _note_renamed(ref, version)
    return version


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
def lineage(
    ref: str = typer.Argument(...),
    fmt: str = typer.Option("tree", "--format", "-f", help="tree, json, mermaid or dot."),
    json_output: bool = JSON,
) -> None:
    """Ancestors and descendants of a version (as a tree, JSON, mermaid or Graphviz dot)."""
    from registry.cli_output import fail
    from registry.errors import RegistryError
    from registry.lineage_render import to_dot, to_mermaid

    if json_output:
        fmt = "json"
    if fmt == "table":
        fmt = "tree"  # the earlier name of the terminal view
    if fmt not in ("tree", "json", "mermaid", "dot"):
        fail(RegistryError(f"--format must be tree, json, mermaid or dot (got {fmt!r})"))
    try:
        graph = _registry().lineage(ref)
    except RegistryError as err:
        fail(err)
        return
    if fmt == "json":
        sys.stdout.write(json.dumps(graph.to_dict(), indent=2) + "\n")
    elif fmt == "mermaid":
        sys.stdout.write(to_mermaid(graph))
    elif fmt == "dot":
        sys.stdout.write(to_dot(graph))
    else:
        _render_lineage(graph)


@alias_app.command("set")
@emits(lambda v: stdout.print(f"{v.name}@{', '.join(v.aliases)} -> {v.ref}"))
def alias_set(
    ref: str = typer.Argument(...), alias: str = typer.Argument(...),
    force: bool = typer.Option(False, "--force", help="Point it at a deprecated or deleted version anyway."),
    protect: bool | None = typer.Option(
        None, "--protect/--unprotect", help="Protect the alias: only admins (or a gated recipe promote) move it."),
    json_output: bool = JSON,
) -> Any:
    """Point ALIAS at the version REF (moving it if it exists)."""
    return _registry().set_alias(ref, alias, force=force, protect=protect)


@alias_app.command("rm")
@emits(lambda d: stdout.print(f"removed {d['name']}@{d['alias']}"))
def alias_rm(
    ref: str = typer.Argument(..., help="name@alias"),
    alias: str | None = typer.Argument(None, help="(old form: NAME ALIAS)"),
    json_output: bool = JSON,
) -> Any:
    """Remove an alias: adreg alias rm NAME@ALIAS."""
    from registry.refs import parse_ref

    _registry().remove_alias(ref, alias)
    name, alias = (ref, alias) if alias is not None else (parse_ref(ref).name, parse_ref(ref).alias)
    return {"name": name, "alias": alias}


@alias_app.command("list")
@emits(lambda items: table(None, ["alias", "version", "updated"],
                           [[f"{a.name}@{a.alias}" + (" (protected)" if a.protected else ""), a.ref,
                             a.updated_at.strftime("%Y-%m-%d %H:%M:%S")] for a in items]))
def alias_list(name: str | None = typer.Argument(None, help="Only this adapter's aliases."),
               json_output: bool = JSON) -> Any:
    """Aliases and the versions they point at."""
    return _registry().aliases(name)


_HISTORY_NOTES = {"alias.protect": "(protected)", "alias.unprotect": "(unprotected)"}


@alias_app.command("history")
@emits(lambda items: table(None, ["time", "by", "from", "to"],
                           [[e["at"][:19].replace("T", " "), e["by"], e["from"] or "-",
                             _HISTORY_NOTES.get(e["action"], e["to"] or "(removed)")] for e in items]))
def alias_history(ref: str = typer.Argument(..., help="name@alias"), json_output: bool = JSON) -> Any:
    """Every move of an alias: when, by whom, from which version to which."""
    return _registry().alias_history(ref)


@base_app.command("list")
@emits(_render_bases)
def base_list(json_output: bool = JSON) -> list[t.BaseModelInfo]:
    """Base models with their architecture and how many versions fit them."""
    return _registry().base_models()


def _render_demo(report: Any) -> None:
    table("adreg demo", ["step", "seconds", "result"],
          [[s["step"], f"{s['seconds']:.2f}", s.get("result", "")] for s in report.steps])
    graph = report.lineage
    if graph.get("edges"):
        table(f"lineage of the {graph['root']}", ["child", "relation", "parent", "weight"],
              [[e["child"], e["relation"], e["parent"], e["weight"]] for e in graph["edges"]])
    stdout.print(f"catalog:   {report.catalog}\nartifacts: {report.artifacts}\ndemo files: {report.workdir}",
                 markup=False)
    stdout.print(f"next: [bold]cd {escape(report.workdir)}[/] and follow the README's tour "
                 "([bold]adreg register ./demo-tone --name support-tone[/], ...), or [bold]adreg list[/]")
    stdout.print(f"look around in a browser: [bold]{escape(report.browse['command'])}[/], then open "
                 f"{escape(report.browse['url'])} (its first start prints a sign-in link)", highlight=False)


@app.command()
@emits(_render_demo)
def demo(json_output: bool = JSON) -> Any:
    """Build a tiny base and three adapters with PEFT, register and merge them, show the lineage."""
    from registry.demo import run_demo

    return run_demo(_registry(), say=activity.say)


# -- merges and jobs ------------------------------------------------------------------------------


class _MultiValueCommand(TyperCommand):
    """Lets ``--weights 0.5 0.3 0.2`` (space-separated, as people write it) mean ``--weights 0.5,0.3,0.2``.

    After ``--weights`` it takes numbers and comma-separated lists of numbers; while fewer weights than the
    references given before ``--weights`` have been taken, it takes any other word too, so that
    ``--weights 0.5 abc`` is reported as a bad weight rather than read as a reference.
    """

    multi = ("--weights", "-w")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {opt for p in self.params if isinstance(p, click.Option) and not p.is_flag for opt in p.opts}
        out: list[str] = []
        positional = 0
        i = 0
        while i < len(args):
            token = args[i]
            out.append(token)
            i += 1
            if token not in self.multi:
                if not token.startswith("-"):
                    positional += 1
                elif token in takes_value and i < len(args):
                    out.append(args[i])  # the value of another option is not a reference
                    i += 1
                continue
            values: list[str] = []
            count = 0
            while i < len(args) and (not args[i].startswith("-") or _is_number(args[i])):
                numbers = _is_number_list(args[i])
                if not numbers and count >= positional:
                    break
                values.append(args[i])
                count += len(args[i].split(",")) if numbers else 1
                i += 1
            out.append(",".join(values))
        return super().parse_args(ctx, out)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _is_number_list(text: str) -> bool:
    parts = text.split(",")
    return all(_is_number(p) for p in parts if p.strip()) and any(p.strip() for p in parts)


def _floats(text: str) -> list[float]:
    from registry.errors import RegistryError

    hint = "write --weights 0.7 0.3 or --weights 0.7,0.3"
    values = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in values if not _is_number(x)]
    if bad:
        raise RegistryError(f"--weights takes numbers, one per source: {', '.join(map(repr, bad))} is not a number",
                            hint=hint)
    if not values:
        raise RegistryError("--weights needs one number per source", hint=hint)
    return [float(x) for x in values]


class JobChain:
    """A job and the follow-ups it queued (validation, then publishing), shown one after the other."""

    def __init__(self, jobs: list[Any]) -> None:
        self.jobs = jobs

    def to_dict(self) -> dict[str, Any]:
        return {**self.jobs[0].to_dict(), "follow_ups": [j.to_dict() for j in self.jobs[1:]]}


def _render_job(job: Any) -> None:
    if isinstance(job, JobChain):
        for one in job.jobs:
            _render_job(one)
        return
    rows = [["job", job.id], ["kind", job.kind], ["status", job.status], ["queue", job.queue],
            ["progress", f"{job.progress:.0%}" + (f" ({job.message})" if job.message else "")],
            ["attempts", job.attempts], ["created", job.created_at]]
    if job.result_ref:
        rows.append(["result", job.result_ref])
    if job.error:
        rows.append(["error", f"{job.error_type}: {job.error}"])
    overall = job.report.get("overall") if isinstance(job.report, dict) else None
    if overall:
        rows.append(["merge error", ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                              for k, v in overall.items())])
    learned = job.report.get("learned_weights") if isinstance(job.report, dict) else None
    if isinstance(learned, dict) and learned.get("weights"):
        objectives = [t["objective"] for t in learned.get("trace") or []]
        rows.append(["learned weights", " ".join(f"{w:.4g}" for w in learned["weights"])
                     + f"  (from {' '.join(f'{w:.4g}' for w in learned.get('initial') or [])})"])
        rows.append(["objective", f"{learned['objective_initial']:.4f} {sparkline(objectives)} "
                     f"{learned['objective_final']:.4f}  ({learned.get('budget')} steps, "
                     f"{learned.get('examples')} rows per source, seed {learned.get('seed')}, "
                     f"{learned.get('objective') or 'mean'})"])
        start, end = learned.get("normalised_initial"), learned.get("normalised_final")
        if isinstance(start, list) and isinstance(end, list):
            rows.append(["normalised loss", " ".join("-" if v is None else f"{v:.3g}" for v in start) + " -> "
                         + " ".join("-" if v is None else f"{v:.3g}" for v in end)
                         + "  ((L - P) / (B - P) per source: 0 its own loss, 1 the base's)"])
    curve = job.report.get("loss_curve") if isinstance(job.report, dict) else None
    if curve:
        rows.append(["loss", f"{curve[0][1]:.4f} {sparkline([v for _, v in curve])} {curve[-1][1]:.4f}"
                     f"  ({len(curve)} steps)"])
        rows.append(["eval loss", f"{job.report['eval_loss_before']:.4f} -> {job.report['eval_loss_after']:.4f}"
                     f"  ({job.report.get('eval_rows')} held-out rows)"])
        rows.append(["update norms", ", ".join(f"{k}={v:.3g}" for k, v in job.report["update_norms"].items())])
        rows.append(["tokens/s", job.report.get("tokens_per_second")])
        if "timings" in job.report:
            rows.append(["time", ", ".join(f"{k} {v:.2f}s" for k, v in job.report["timings"].items())])
        rows.append(["registered", ", ".join(job.report.get("registered", []))])
    table(None, ["field", "value"], rows)
    if isinstance(job.report, dict) and "layer_status" in job.report:
        _render_validation(job.report)
    if job.kind == "eval" and isinstance(job.report, dict) and isinstance(job.report.get("datasets"), dict):
        _render_eval(job.report)
    if isinstance(job.report, dict) and isinstance(job.report.get("retention"), dict):
        _render_retention(job.report["retention"])


def _render_retention(measured: dict[str, Any]) -> None:
    def number(x: Any) -> str:
        return f"{x:.4g}" if isinstance(x, (int, float)) else "-"

    rows = [[p.get("parent"), d.get("dataset"), *(number(d.get(k)) for k in
                                                   ("base_loss", "parent_loss", "merged_loss", "retention"))]
            for p in measured.get("parents", []) for d in p.get("datasets", [])]
    table(f"retention: mean {number(measured.get('mean'))}, min {number(measured.get('min'))}",
          ["parent", "dataset", "base loss", "parent loss", "merged loss", "retention"], rows)


def _render_eval(report: dict[str, Any]) -> None:
    classifier = report.get("task_type") in ("SEQ_CLS", "TOKEN_CLS")
    names, counted = (("eval_loss", "accuracy", "f1"), "examples") if classifier else (
        ("eval_loss", "perplexity", "token_accuracy"), "tokens")
    rows = []
    for ref, result in report["datasets"].items():
        for side in ("base", "adapter"):
            values = result.get(side) or {}
            rows.append([ref, "base" if side == "base" else report.get("ref", ""), result.get("rows"),
                         result.get(counted), *(f"{values[k]:.4g}" if isinstance(values.get(k), float) else "-"
                                                for k in names)])
    columns = ["loss", "accuracy", "macro F1"] if classifier else ["loss", "perplexity", "token acc"]
    table(f"evaluation of {report.get('ref', '')} on {report.get('device', '?')}",
          ["dataset", "model", "rows", counted, *columns], rows)


def _render_validation(report: dict[str, Any]) -> None:
    table(f"runtime validation of {report.get('ref', '')} on {report.get('device', '?')}",
          ["check", "outcome", "detail"], validation_rows(report))
    stdout.print("[dim]max |diff|: the largest absolute difference between output logits of the two models on the "
                 "same random probe inputs (the adapter vs the base, a parent or the exact weighted sum of the "
                 "parents).[/]")


def sparkline(values: list[float], width: int = 40) -> str:
    """A one-line chart of ``values`` (downsampled to ``width`` points)."""
    if not values:
        return ""
    step = max(1, len(values) // width)
    points = values[::step]
    low, high = min(points), max(points)
    bars = "▁▂▃▄▅▆▇█"
    span = (high - low) or 1.0
    return "".join(bars[min(7, int((v - low) / span * 7.999))] for v in points)


def _render_jobs(items: list[Any]) -> None:
    table(None, ["job", "kind", "status", "progress", "result", "created", "error"],
          [[j.id, j.kind, j.status, f"{j.progress:.0%}", j.result_ref or "", j.created_at.strftime("%H:%M:%S"),
            (j.error or "")[:60]] for j in items])


def _wait(job: Any, show_progress: bool) -> Any:
    from registry.jobs import JobFailed

    try:
        if not show_progress:
            return job.wait()
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("job {task.fields[job]}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TextColumn("{task.description}"), TimeElapsedColumn(), console=stderr) as bar:
            task = bar.add_task(job.message or job.status, total=1.0, job=job.id, completed=job.progress)
            job.wait(on_progress=lambda j: bar.update(task, completed=j.progress, description=j.message or j.status))
            bar.update(task, completed=1.0)
        return job
    except JobFailed:
        return job.refresh()


def _follow(job: Any, wait: bool, json_output: bool, what: str) -> Any:
    """Wait for a submitted job if asked (a progress bar for people). A job that ended failed or cancelled is
    shown, then the command exits 1."""
    from registry.cli_output import FailedOutcome

    if wait and not job.done:
        job = _wait(job, show_progress=not json_output)
    if job.status in ("failed", "cancelled"):
        raise FailedOutcome(f"{what} job {job.id} {job.status}: {job.error or job.message or ''}".rstrip(": "), job)
    return job


def _follow_chain(job: Any, follow_ups: int, wait: bool, json_output: bool, what: str) -> Any:
    """:func:`_follow` a job, then the ``follow_ups`` jobs it queues one after another (a worker queues each
    right after finishing the previous one, so each is looked for for a few seconds)."""
    import time

    from registry.cli_output import FailedOutcome

    job = _follow(job, wait, json_output, what)
    if not wait or not follow_ups:
        return job
    chain = [job]
    while len(chain) <= follow_ups:
        deadline = time.monotonic() + 15
        children = _registry().jobs(parent_job_id=chain[-1].id)
        while not children and time.monotonic() < deadline:
            time.sleep(0.2)
            children = _registry().jobs(parent_job_id=chain[-1].id)
        if not children:
            break
        try:
            chain.append(_follow(children[-1], True, json_output, children[-1].kind))
        except FailedOutcome as err:
            raise FailedOutcome(str(err), JobChain([*chain, err.data])) from None
    return JobChain(chain)


def _merge_report_render(data: Any) -> None:
    if hasattr(data, "kind") or isinstance(data, JobChain):  # a catalog job
        _render_job(data)
        return
    overall = data.get("overall", {})
    stdout.print(f"merged into {data.get('out')}", markup=False)
    table(None, ["metric", "value"], [[k, v] for k, v in overall.items()])


@app.command(cls=_MultiValueCommand)
@emits(_merge_report_render)
def merge(
    sources: list[str] = typer.Argument(..., help="Catalog references (name:2, name@alias) or adapter folders."),
    weights: str | None = typer.Option(
        None, "--weights", "-w", help="One weight per source: 0.5 0.3 0.2 (or 0.5,0.3,0.2); with --learn-weights "
                                      "the starting point (default 1/n each)."),
    method: str = typer.Option("svd", "--method", "-m", help="Combination type (see docs/merge.md)."),
    density: float | None = typer.Option(None, "--density", help="Kept fraction for ties/dare/magnitude_prune."),
    svd_rank: int | None = typer.Option(None, "--svd-rank", help="Output rank for the *svd methods."),
    svd_clamp: float | None = typer.Option(None, "--svd-clamp", help="Quantile clamp for the *svd methods."),
    majority_sign_method: str = typer.Option("total", "--majority-sign-method", help="total or frequency."),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed for dare_* and for --learn-weights' row sampling (reproducible runs)."),
    scale: float | None = typer.Option(None, "--scale", help="The papers' alpha: iso_c, tsv_m, iso_cts (default 1)."),
    tsv_fraction: float | None = typer.Option(
        None, "--tsv-fraction", help="Fraction of each task's rank tsv_m keeps (default 1/number of inputs)."),
    common_fraction: float | None = typer.Option(
        None, "--common-fraction", help="Fraction of the rank iso_cts gives the common subspace (default 0.8)."),
    knots_inner: str | None = typer.Option(
        None, "--knots-inner", help="knots' inner merge: ties (default; --density, default 1) or linear."),
    core_inner: str | None = typer.Option(
        None, "--core-inner", help="core's inner merge: ties (default; --density, default 1) or linear."),
    dtype: str | None = typer.Option(None, "--dtype", help="float32, float16 or bfloat16 (default: inputs')."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write to this folder; no catalog involved."),
    name: str | None = typer.Option(None, "--name", "-n", help="Register the result as the next version of NAME."),
    tag: list[str] = typer.Option(None, "--tag", "-t", help="key=value on the new version; repeatable."),
    allow_cross_base: bool = typer.Option(False, "--allow-cross-base", help="Allow different base revisions."),
    validate: bool | None = typer.Option(
        None, "--validate/--no-validate", help="Validate the result at run time (default: when the parents have "
                                               "held-out data, measuring retention on it)."),
    publish: str | None = typer.Option(None, "--publish", help="Hub repo to publish to once validation passes."),
    base_model_id: str | None = typer.Option(
        None, "--base-model-id", help="With --publish: the card's base_model when the base is a local folder."),
    learn_weights: bool = typer.Option(
        False, "--learn-weights", help="Learn the weights on the sources' held-out data first (catalog mode; "
                                       "docs/merge.md, Learned weights)."),
    examples: int = typer.Option(32, "--examples", help="With --learn-weights: held-out rows per source."),
    budget: int = typer.Option(40, "--budget", help="With --learn-weights: optimiser steps."),
    objective: str = typer.Option(
        "mean", "--objective", help="With --learn-weights: what the search minimises: mean (the mean held-out loss, "
                                    "LoraHub's) or worst (a smooth maximum of the normalised losses: the worst-off "
                                    "source first)."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait for the job (catalog mode)."),
    idempotency_key: str | None = IDEMPOTENCY,
    json_output: bool = JSON,
) -> Any:
    """Merge adapters: folders into --out, or catalog versions into a new version --name (--learn-weights: with
    weights learned on the sources' held-out data)."""
    from registry.errors import RegistryError

    if (out is None) == (name is None):
        raise RegistryError("give exactly one of --out (merge folders) or --name (merge catalog versions)")
    if learn_weights and out is not None:
        raise RegistryError("--learn-weights needs catalog versions and --name (their held-out data is in the "
                            "catalog), not --out")
    if objective != "mean" and not learn_weights:
        raise RegistryError("--objective chooses what --learn-weights minimises: give --learn-weights too")
    if weights is None and not learn_weights:
        raise RegistryError("give --weights (one per source), or --learn-weights to learn them")
    weight_list = _floats(weights) if weights is not None else None
    params = dict(density=density, svd_rank=svd_rank, svd_clamp=svd_clamp,
                  majority_sign_method=majority_sign_method, seed=seed, scale=scale,
                  tsv_fraction=tsv_fraction, common_fraction=common_fraction, knots_inner=knots_inner,
                  core_inner=core_inner)
    if out is not None:
        return _merge_folders(sources, weight_list or [], method, out, dtype, params,
                              allow_cross_base=allow_cross_base)
    learn = dict(learn_weights=True, learn_examples=examples, learn_budget=budget,
                 learn_objective=objective) if learn_weights else {}
    job = _registry().merge(sources, weights=weight_list, method=method, name=name, dtype=dtype,
                            tags=_tags(tag), allow_cross_base=allow_cross_base, validate=validate,
                            publish_to=_registry().publish_target(publish, base_model_id=base_model_id)
                            if publish else None, idempotency_key=idempotency_key, **learn, **params)
    _warn_job(job)
    return _follow_chain(job, 2 if publish else int(bool(job.spec.get("validate_after"))), wait, json_output,
                         "merge")


def _merge_folders(sources: list[str], weights: list[float], method: str, out: Path, dtype: str | None,
                   params: dict[str, Any], allow_cross_base: bool = False) -> dict[str, Any]:
    from registry.inspect import inspect_adapter
    from registry.merge_rules import check_merge
    from workers.merge import merge_adapters

    manifests = [inspect_adapter(Path(src)) for src in sources]
    given = {k: v for k, v in params.items() if v is not None}
    check_merge(manifests, weights, method, given, allow_cross_base=allow_cross_base, labels=list(sources))
    activity.say(f"merging {len(sources)} adapters by {method}")
    report = merge_adapters(
        [Path(s) for s in sources], weights, method, out=out, dtype=dtype, allow_cross_base=allow_cross_base,
        progress=lambda f, msg=None: activity.say(f"{method}: {f:.0%} {msg or ''}"), **given,
    )
    data = report.to_dict()
    data["out"] = str(out)
    return data


@app.command()
@emits(_render_job)
def train(
    sources: list[str] = typer.Argument(None, help="Version(s) to continue: name:2, name@alias."),
    data: Path = typer.Option(..., "--data", help="JSONL/JSON, .txt, .parquet; columns per task in docs/train.md."),
    steps: int = typer.Option(100, "--steps", min=1),
    lr: float = typer.Option(1e-4, "--lr"),
    name: str | None = typer.Option(None, "--name", "-n", help="Register as this name (default: the source's)."),
    new: str | None = typer.Option(None, "--new", help="Create a fresh adapter with this name."),
    reuse_name: bool = typer.Option(
        False, "--reuse-name", help="Let --new add a version to an existing name (no lineage to its versions)."),
    base: str | None = typer.Option(None, "--base", help="Base model (name or local folder) for --new."),
    task_type: str | None = typer.Option(
        None, "--task-type", help="Task of a --new adapter: CAUSAL_LM, SEQ_CLS, TOKEN_CLS or SEQ_2_SEQ_LM "
                                  "(default: from the base's architecture)."),
    targets: str = typer.Option("all-linear", "--targets", help="Comma-separated module names, or all-linear."),
    r: int = typer.Option(16, "--r", help="Rank of a new adapter."),
    alpha: float = typer.Option(32, "--alpha", help="lora_alpha of a new adapter."),
    dropout: float = typer.Option(0.0, "--dropout"),
    joint: bool = typer.Option(False, "--joint", help="Train several sources together, all active at once."),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    grad_accum: int = typer.Option(1, "--grad-accum", min=1),
    max_length: int = typer.Option(256, "--max-length", min=8),
    eval_rows: int | None = typer.Option(
        None, "--eval-rows", min=1, help="Held-out rows for eval loss before/after (default: 10%, at most 200)."),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1),
    bf16: bool = typer.Option(False, "--bf16", help="bf16 mixed precision (GPU)."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="(GPU)"),
    tag: list[str] = typer.Option(None, "--tag", "-t"),
    validate: bool = typer.Option(False, "--validate", help="Queue a runtime validation of each result."),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    idempotency_key: str | None = IDEMPOTENCY,
    json_output: bool = JSON,
) -> Any:
    """Continue an adapter, create one (--new), or train several jointly (--joint)."""
    from registry.errors import RegistryError

    sources = list(sources or [])
    if len(sources) > 1 and not joint:
        raise RegistryError("several sources given: add --joint to train them together")
    if new is not None and (base is None or sources):
        raise RegistryError("--new needs --base and no source versions")
    job = _registry().train(
        sources[0] if sources else None, joint_with=sources[1:], data=data, steps=steps, lr=lr,
        name=new or name, base=base, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        eval_rows=eval_rows,
        new={"r": r, "alpha": alpha, "targets": targets.split(","), "dropout": dropout} if new else None,
        seed=seed, checkpoint_every=checkpoint_every, bf16=bf16, gradient_checkpointing=gradient_checkpointing,
        tags=_tags(tag), validate=validate, task_type=task_type, reuse_name=reuse_name,
        idempotency_key=idempotency_key,
    )
    _warn_job(job)
    return _follow(job, wait, json_output, "training")


@app.command()
@emits(_render_job)
def publish(
    ref: str = typer.Argument(..., help="Version to publish."),
    repo: str = typer.Option(..., "--repo", help="Hub repository id, org/name."),
    branch: str = typer.Option("main", "--branch"),
    private: bool = typer.Option(False, "--private"),
    create_pr: bool = typer.Option(False, "--create-pr", help="Open a pull request instead of pushing."),
    base_model_id: str | None = typer.Option(
        None, "--base-model-id", help="Hub id for the card's base_model when the base is a local folder."),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    idempotency_key: str | None = IDEMPOTENCY,
    json_output: bool = JSON,
) -> Any:
    """Publish a version to the Hugging Face Hub with a model card (base_model, lineage, recipe, evidence)."""
    job = _registry().publish(ref, repo, branch=branch, private=private, create_pr=create_pr,
                              base_model_id=base_model_id, idempotency_key=idempotency_key)
    return _follow(job, wait, json_output, "publish")


@app.command("validate")
@emits(_render_job)
def validate_cmd(
    ref: str = typer.Argument(..., help="Version to load on its base model and check."),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    idempotency_key: str | None = IDEMPOTENCY,
    json_output: bool = JSON,
) -> Any:
    """Validate a version at run time against its base model's real weights (PEFT, logits probes)."""
    return _follow(_registry().validate(ref, idempotency_key=idempotency_key), wait, json_output, "validation")


@app.command("eval")
@emits(_render_job)
def eval_cmd(
    ref: str = typer.Argument(..., help="Version to evaluate (and its bare base)."),
    data: list[str] = typer.Option(None, "--data", help="A catalog dataset (name or name:N); repeatable. Default: "
                                   "the version's linked eval datasets."),
    max_rows: int = typer.Option(1000, "--max-rows", min=1, help="Rows read from each dataset (its first ones)."),
    max_length: int = typer.Option(256, "--max-length", min=8, help="Tokens per row (longer rows are cut)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    idempotency_key: str | None = IDEMPOTENCY,
    json_output: bool = JSON,
) -> Any:
    """Evaluate a version and its base on datasets: loss, perplexity, token accuracy (causal LMs) or loss,
    accuracy, macro-F1 (classifiers), as metrics."""
    job = _registry().evaluate(ref, data=list(data) if data else None, max_length=max_length, batch_size=batch_size,
                               max_rows=max_rows, idempotency_key=idempotency_key)
    return _follow(job, wait, json_output, "evaluation")


def _render_run(run: Any) -> None:
    from rich.tree import Tree

    tree = Tree(f"run {run.id} [bold]{escape(run.recipe_name)}[/] ({run.trigger}): {run.status}"
                + (f" - {escape(run.message)}" if run.message else ""))
    by_id = {j["id"]: j for j in run.jobs}
    for index, step in enumerate(run.steps):
        marker = run.step_jobs.get(step)
        state = "done" if step in run.outputs else ("current" if index == run.current_step else "pending")
        node = tree.add(escape(f"{step}: {state}" + (f" -> {run.outputs[step]}" if step in run.outputs else "")))
        job = by_id.get(marker) if isinstance(marker, int) else None
        if job is not None:
            node.add(escape(f"job {job['id']} {job['kind']} {job['status']}"
                            + (f": {job['error']}" if job["error"] else "")))
            for child in (j for j in run.jobs if j["parent_job_id"] == job["id"]):
                node.add(f"job {child['id']} {child['kind']} {child['status']}")
    stdout.print(tree)


@app.command("jobs")
def jobs_cmd(
    status: str | None = typer.Option(None, "--status", help="queued, running, succeeded, failed, cancelled"),
    kind: str | None = typer.Option(None, "--kind", help="merge, validate, ..."),
    run: int | None = typer.Option(None, "--run", help="Show one recipe run's chain as a tree."),
    limit: int = typer.Option(50, "--limit", min=1, max=1000),
    json_output: bool = JSON,
) -> None:
    """Recent jobs, newest first (or one run's chain with --run)."""

    @emits(_render_run if run is not None else _render_jobs)
    def show(json_output: bool) -> Any:
        if run is not None:
            return _registry().run(run)
        return _registry().jobs(status=status, kind=kind, limit=limit)

    show(json_output=json_output)


@app.command("run")
@emits(_render_run)
def run_cmd(recipe: Path = typer.Argument(..., help="Recipe YAML file."), idempotency_key: str | None = IDEMPOTENCY,
            json_output: bool = JSON) -> Any:
    """Check a recipe and run it once as a chain of jobs (exit 1 if the run failed)."""
    from registry.cli_output import FailedOutcome

    run = _registry().run_recipe(recipe, idempotency_key=idempotency_key)
    if run.status in ("failed", "cancelled"):
        raise FailedOutcome(f"run {run.id} of {run.recipe_name} {run.status}: {run.message or ''}".rstrip(": "), run)
    return run


@app.command("runs")
@emits(lambda runs: table(None, ["run", "recipe", "trigger", "status", "message", "created"],
                          [[r.id, r.recipe_name, r.trigger, r.status, (r.message or "")[:70],
                            r.created_at.strftime("%Y-%m-%d %H:%M")] for r in runs]))
def runs_cmd(limit: int = typer.Option(50, "--limit", min=1, max=1000), json_output: bool = JSON) -> Any:
    """Recent recipe runs."""
    return _registry().runs(limit=limit)


@recipe_app.command("schema")
def recipe_schema() -> None:
    """Print the recipe JSON schema."""
    from registry.recipes import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@recipe_app.command("check")
@emits(lambda d: stdout.print(f"recipe {d['name']} is valid: {len(d['steps'])} step(s)", markup=False))
def recipe_check(recipe: Path = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Validate a recipe file (syntax and step references; `adreg run` also resolves the catalog)."""
    from registry.recipes import load_recipe

    return load_recipe(recipe).model_dump(by_alias=True, exclude_none=True)


def _render_schedules(items: list[dict]) -> None:
    table(None, ["name", "recipe", "cron", "tz", "catch-up", "on alias", "enabled", "next fire"],
          [[d["name"], d["recipe"], d["cron"] or "-", d["timezone"], d["catch_up"], d["on_alias"] or "-",
            "yes" if d["enabled"] else "paused", d["next_fire_at"] or "-"] for d in items])


@schedule_app.command("add")
@emits(lambda d: _render_schedules([d]))
def schedule_add(
    recipe: Path = typer.Argument(...),
    cron: str | None = typer.Option(None, "--cron", help='e.g. "0 3 * * 1" (Mondays 03:00)'),
    tz: str = typer.Option("UTC", "--tz", help="IANA time zone of the cron expression."),
    catch_up: str = typer.Option("latest", "--catch-up", help="latest, all or none: what to do with missed fires."),
    on_alias: str | None = typer.Option(None, "--on-alias", help="Also fire when this name@alias moves."),
    name: str | None = typer.Option(None, "--name", help="Schedule name (default: the recipe's)."),
    json_output: bool = JSON,
) -> Any:
    """Schedule a recipe."""
    return _registry().add_schedule(recipe, name=name, cron=cron, tz=tz, catch_up=catch_up, on_alias=on_alias)


@schedule_app.command("list")
@emits(_render_schedules)
def schedule_list(json_output: bool = JSON) -> Any:
    """Schedules with their next fire time."""
    return _registry().schedules()


@schedule_app.command("pause")
@emits(lambda d: _render_schedules([d]))
def schedule_pause(name: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Pause a schedule (it keeps its place; resume picks up from now)."""
    return _registry().set_schedule_enabled(name, False)


@schedule_app.command("resume")
@emits(lambda d: _render_schedules([d]))
def schedule_resume(name: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Resume a paused schedule."""
    return _registry().set_schedule_enabled(name, True)


@schedule_app.command("rm")
@emits(lambda d: stdout.print(f"removed schedule {d['name']}", markup=False))
def schedule_rm(name: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Remove a schedule (its past runs stay)."""
    _registry().remove_schedule(name)
    return {"name": name}


@schedule_app.command("run-now")
@emits(_render_run)
def schedule_run_now(name: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Run a schedule's recipe once, now."""
    return _registry().run_schedule_now(name)


@app.command()
def scheduler(
    interval: float = typer.Option(30.0, "--interval", min=0.1, help="Seconds between ticks."),
    once: bool = typer.Option(False, "--once", help="Tick once and exit."),
) -> None:
    """Run the schedule tick in a loop (the embedded default's Celery beat)."""
    import time

    from registry.errors import RegistryError

    reg = _registry()
    while True:
        try:
            started = reg.tick()
        except RegistryError as err:
            from registry.cli_output import fail

            fail(err)
        if started:
            stderr.print(f"started run(s) {', '.join(map(str, started))}")
        if once:
            return
        time.sleep(interval)


@app.command()
def beat(loglevel: str = typer.Option("INFO", "--loglevel", "-l")) -> None:
    """Run Celery beat: it sends the schedule tick to the cpu queue every ADREG_TICK_SECONDS (default 30)."""
    from registry.config import Settings
    from workers.celery_app import app as celery_app

    home = Settings.from_env(_state.get("db"), _state.get("home")).home  # beat needs no catalog, only a folder
    home.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "-l", loglevel, "-s", str(home / "celerybeat-schedule")])


@app.command()
def doctor(json_output: bool = JSON) -> None:
    """Check the catalog schema, the broker, the workers, queue depths and free space; exit 1 if unhealthy."""
    from registry.doctor import run_checks

    checks = run_checks(_state.get("db"), _state.get("home"))
    if json_output:
        sys.stdout.write(json.dumps(checks, indent=2) + "\n")
    else:
        table(None, ["check", "ok", "detail"], [[c["check"], "yes" if c["ok"] else "NO", c["detail"]] for c in checks])
    if not all(c["ok"] for c in checks):
        raise typer.Exit(1)


@app.command()
@emits(lambda d: stdout.print(
    f"{'removed' if d['applied'] else 'would remove'} {len(d['paths'])} path(s), {human_size(d['bytes'])}"
    + ("" if d["applied"] else " (dry run: add --apply)") + "".join(f"\n  {p}" for p in d["paths"][:20])
    + (f"\nfiles of purged version(s): {', '.join(d['versions'])}" if d.get("versions") else ""), markup=False))
def gc(
    apply: bool = typer.Option(False, "--apply", help="Delete (default: only list)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list (the default; refused with --apply)."),
    json_output: bool = JSON,
) -> Any:
    """Files no version or unfinished job references (hard-deleted versions' included), scratch folders (admin)."""
    from registry.errors import RegistryError

    if apply and dry_run:
        raise RegistryError("--apply and --dry-run contradict each other: give one")
    return _registry().gc(dry_run=not apply)


@app.command("job")
@emits(_render_job)
def job_cmd(
    job_id: int = typer.Argument(...),
    wait: bool = typer.Option(False, "--wait", help="Wait for it to finish, with a progress bar."),
    json_output: bool = JSON,
) -> Any:
    """Show one job (its progress, error, report and result)."""
    job = _registry().job(job_id)
    return _follow(job, True, json_output, job.kind) if wait else job


@app.command("cancel")
@emits(lambda d: stdout.print(f"job {d['job']}: {d['status']}"))
def cancel_cmd(job_id: int = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Cancel a queued job, or ask a running one to stop at its next check."""
    return {"job": job_id, "status": _registry().cancel(job_id)}


@app.command()
def worker(
    queues: str = typer.Option("cpu", "--queues", "-Q", help="Comma-separated: cpu, gpu."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1),
    pool: str | None = typer.Option(None, "--pool", help="prefork (default for cpu) or solo (default with gpu)."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Run a Celery worker for the catalog's jobs (needs ADREG_BROKER_URL)."""
    import os

    from registry.errors import RegistryError

    if not os.environ.get("ADREG_BROKER_URL"):
        from registry.cli_output import fail

        fail(RegistryError("ADREG_BROKER_URL is not set", hint="export ADREG_BROKER_URL=redis://127.0.0.1:6379/0"))
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names or any(q not in ("cpu", "gpu") for q in names):
        from registry.cli_output import fail

        fail(RegistryError(f"--queues must list cpu and/or gpu (got {queues!r})"))
    # GPU workers never fork after CUDA may have been initialised: solo pool, one job at a time.
    chosen = pool or ("solo" if "gpu" in names else "prefork")
    from workers.celery_app import app as celery_app

    celery_app.worker_main([
        "worker", "-Q", ",".join(names), "-c", str(1 if chosen == "solo" else concurrency), "-P", chosen,
        "-l", loglevel, "-n", f"adreg-{'-'.join(names)}-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
    ])


# -- lifecycle (issue 15) --
def _note_renamed(ref: str, version: t.AdapterVersion) -> None:
    """Say on stderr when ``ref`` named the adapter by a former name (``adreg rename``)."""
    from registry.refs import parse_ref

    asked = parse_ref(ref).name
    if asked is not None and asked != version.name:
        stderr.print(f"[yellow]note:[/] {escape(asked)} was renamed to {escape(version.name)}; this is "
                     f"{escape(version.ref)}", highlight=False)


def _warn_job(job: Any) -> None:
    """Print what a submission warned about (a deprecated input) on stderr."""
    for warning in getattr(job, "warnings", None) or []:
        stderr.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


def _render_status(v: t.AdapterVersion) -> None:
    stdout.print(f"{v.ref}: {v.status}" + (f" ({v.status_reason})" if v.status_reason else ""), markup=False)


@app.command()
@emits(_render_status)
def deprecate(
    ref: str = typer.Argument(..., help="name:N or name@alias"),
    reason: str = typer.Option(..., "--reason", "-r", help="Why (shown wherever the version is)."),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Deprecate a version: still usable by exact reference, never a name's latest; jobs using it warn."""
    return _registry().deprecate(ref, reason)


@app.command()
@emits(_render_status)
def undeprecate(ref: str = typer.Argument(..., help="name:N or name@alias"), json_output: bool = JSON) -> Any:
    """Make a deprecated version ready again."""
    return _registry().undeprecate(ref)


@app.command("delete")
@emits(_render_status)
def delete_cmd(
    ref: str = typer.Argument(..., help="name:N or name@alias"),
    hard: bool = typer.Option(False, "--hard", help="Also purge it: `adreg gc --apply` then frees its files."),
    force: bool = typer.Option(False, "--force", help="Remove the aliases that point at it."),
    reason: str | None = typer.Option(None, "--reason", "-r", help="Why (shown to whoever refers to it)."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (scripts)."),
    json_output: bool = JSON,
) -> Any:
    """Delete a version: hidden from listings and references, kept in lineage as a tombstone."""
    from registry.errors import RegistryError

    if not (yes or json_output):
        if not sys.stdin.isatty():
            raise RegistryError(f"not deleting {ref} without confirmation", hint="pass --yes (or --json)")
        if not typer.confirm(f"{'delete and purge' if hard else 'delete'} {ref}?", err=True):
            raise RegistryError(f"{ref} was not deleted")
    return _registry().delete(ref, hard=hard, force=force, reason=reason)


@app.command()
@emits(lambda d: stdout.print(f"renamed {d['old']} -> {d['new']} ({d['versions']} version(s)); {d['old']} keeps "
                              "resolving to it until an adapter is registered under that name", markup=False))
def rename(old: str = typer.Argument(...), new: str = typer.Argument(...), json_output: bool = JSON) -> Any:
    """Rename an adapter; the old name keeps resolving to it (saying so) until it is reused."""
    return _registry().rename(old, new)
# -- end lifecycle --

# -- text search (issue 15) --
@app.command()
@emits(_render_version)
def describe(
    ref: str = typer.Argument(..., help="name (the adapter's description), name:3 or name@alias (one version's)"),
    description: str = typer.Argument(..., help='The new description ("" clears it).'),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Set the description of an adapter (NAME) or of one version (NAME:N, NAME@ALIAS); text search finds both."""
    return _registry().describe(ref, description)
# -- end text search --

# -- metrics (issue 15) --


def _render_metrics(v: t.AdapterVersion) -> None:
    table(v.ref, ["metric", "dataset", "value", "source", "job", "recorded", "by"],
          [[x.name, x.dataset or "-", f"{x.value:.6g}", x.source, x.job_id or "-",
            x.recorded_at.strftime("%Y-%m-%d %H:%M:%S"), x.recorded_by or "-"] for x in v.metrics])


def _metric_pairs(pairs: list[str]) -> dict[str, float]:
    """``["eval_loss=1.9", "accuracy=0.8"]`` as {name: value}; a name given twice or a value that is no finite
    number is refused (the names themselves are checked by the operation)."""
    import math

    from registry.errors import RegistryError

    values: dict[str, float] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise RegistryError(f"{pair!r} is not name=value", hint="e.g. adreg metric tone:3 eval_loss=1.92")
        if name in values:
            raise RegistryError(f"metric {name} is given twice")
        try:
            value = float(text.strip())
        except ValueError:
            raise RegistryError(f"metric {name}: {text!r} is not a number") from None
        if not math.isfinite(value):
            raise RegistryError(f"metric {name}: the value must be finite, not {text.strip()!r}")
        values[name] = value
    return values


@app.command("metric")
@emits(_render_metrics)
def metric_cmd(
    ref: str = typer.Argument(..., help="name, name:3 or name@alias"),
    pairs: list[str] = typer.Argument(..., help="name=value pairs, e.g. eval_loss=1.92 accuracy=0.81"),
    data: str | None = typer.Option(None, "--data", help="The dataset the values were measured on (e.g. wiki)."),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Log metrics of a version (all in one go; the same name and dataset again replaces the value)."""
    return _registry().log_metrics(ref, _metric_pairs(pairs), dataset=data)


def _listed_metrics(where: str | None, sort: str) -> list[tuple[str, str]]:
    """The (metric, dataset) pairs a listing filters or sorts on, in order, each once: its extra columns."""
    from registry.where import parse, parse_metric_sort

    chosen = [parse_metric_sort(sort)]
    if where:
        chosen += [(c.metric, c.dataset) for c in parse(where)]
    return list(dict.fromkeys(c for c in chosen if c is not None))


def _render_listing(page: t.SearchPage) -> None:
    """``adreg list``: the usual table, or, when it filters or sorts on metrics, one with those metrics' columns."""
    from registry.where import render_metric

    shown = _state.get("listed_metrics") or []
    if not shown:
        _render_versions(page)
        return
    values = [{(x.name, x.dataset): x.value for x in v.metrics} for v in page.items]
    table(None, ["version", *(escape(render_metric(*c)) for c in shown), "r", "tags", "aliases"],  # titles are markup
          [[v.ref, *(f"{got[c]:.6g}" if c in got else "-" for c in shown), v.r,
            ",".join(f"{k}={val}" for k, val in sorted(v.tags.items())), ",".join(v.aliases)]
           for v, got in zip(page.items, values, strict=True)])
    first = f"{page.offset + 1}-{page.offset + len(page.items)}" if page.items else "0"
    stdout.print(f"[dim]{first} of {page.total}[/]")
# -- end metrics --

# -- diff (issue 15) --
def _change(c: t.ConfigChange) -> str:
    def text(v: Any) -> str:
        return json.dumps(int(v) if isinstance(v, float) and v.is_integer() else v)

    return f"{c.key}: {text(c.old)} -> {text(c.new)}"


def _first(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f" (+{len(names) - count} more)" if len(names) > count else "")


def _distance(distance: float | None, abs_distance: float) -> str:
    return f"{distance:.4g}" if distance is not None else f"{abs_distance:.4g} (abs)"


def _render_diff(d: t.VersionDiff, top: int = 20) -> None:
    out = stdout.print
    out(f"A = {d.a}, B = {d.b}" + ("  (the same weights file)" if d.same_weights else ""), markup=False)
    rank_keys = {c.key for c in d.rank_changes}
    lines = [("base", _change(c)) for c in d.base_changes] + [("rank/alpha", _change(c)) for c in d.rank_changes]
    lines += [("config", _change(c)) for c in d.config_changes if c.key not in rank_keys]
    for what, text in lines:
        out(f"  {what:<10} {text}", markup=False)
    groups: dict[str, list[str]] = {}
    for m in d.module_ranks:
        key = (f"r {m.rank_a}->{m.rank_b}, alpha {m.alpha_a:g}->{m.alpha_b:g}, "
               f"scaling {m.scaling_a:.4g}->{m.scaling_b:.4g}")
        groups.setdefault(key, []).append(m.module)
    for key, names in groups.items():
        out(f"  per module {key} on {len(names)} module(s): {_first(names, 3)}", markup=False)
    for sign, names, where in (("+", d.modules_added, "in B only"), ("-", d.modules_removed, "in A only")):
        if names:
            out(f"  modules {sign}{len(names)} ({where}): {_first(names)}", markup=False)
    if d.target_modules_added or d.target_modules_removed:
        out("  targets   " + " ".join([f"+{x}" for x in d.target_modules_added] +
                                      [f"-{x}" for x in d.target_modules_removed]), markup=False)
    if not (lines or d.module_ranks or d.modules_added or d.modules_removed):
        out("  same config, modules, ranks and alphas", markup=False)
    overall = _distance(d.overall_distance, d.overall_abs_distance)
    out(f"overall ||dA - dB|| / ||dB||: {overall} over {len(d.modules)} module(s) in both; "
        f"computed in {d.seconds:.2f} s", markup=False)
    if d.modules:
        title = f"most different modules ({min(top, len(d.modules))} of {len(d.modules)})"
        table(title, ["module", "kind", "distance", "||dA||", "||dB||", "rank"],
              [[m.module, m.kind, _distance(m.distance, m.abs_distance), f"{m.norm_a:.4g}", f"{m.norm_b:.4g}",
                f"{m.rank_a}" if m.rank_a == m.rank_b else f"{m.rank_a}->{m.rank_b}"] for m in d.modules[:top]])
    if d.tensors:
        table(f"other tensors ({min(top, len(d.tensors))} of {len(d.tensors)})",
              ["tensor", "kind", "distance", "||A||", "||B||"],
              [[x.key, x.kind, _distance(x.distance, x.abs_distance), f"{x.norm_a:.4g}", f"{x.norm_b:.4g}"]
               for x in d.tensors[:top]])
    for sign, names, where in (("+", d.tensors_added, "in B only"), ("-", d.tensors_removed, "in A only")):
        if names:
            out(f"other tensors {sign}{len(names)} ({where}): {_first(names)}", markup=False)
    for item in d.not_compared:
        out(f"not compared: {item.name}: {item.reason}", markup=False)
    for note in d.notes:
        out(f"note: {note}", markup=False)


@app.command()
def diff(
    a: str = typer.Argument(..., help="Version A: name, name:3 or name@alias."),
    b: str = typer.Argument(..., help="Version B (distances are relative to B's deltas)."),
    top: int = typer.Option(20, "--top", "-n", min=1, help="Modules shown in the table (--json has all)."),
    json_output: bool = JSON,
) -> None:
    """What differs from A to B: base, config, targets, rank/alpha, and each module's ||dA - dB|| / ||dB||."""

    @emits(lambda d: _render_diff(d, top))
    def run(json_output: bool) -> t.VersionDiff:
        return _registry().diff(a, b)

    run(json_output=json_output)
# -- end diff --

# -- named bases (issue 15) --
_COLLAPSE_OVER = 12  # modules; a longer shapes table shows one row per layer pattern


def shape_rows(shapes: dict[str, dict[str, Any]]) -> list[list[str]]:
    """``[module, kind, in x out, count]`` rows; past :data:`_COLLAPSE_OVER` modules, the layer numbers become ``*``
    and equal rows are counted (``model.layers.*.self_attn.q_proj  64x64  x2``)."""
    import re

    collapse = len(shapes) > _COLLAPSE_OVER
    rows: dict[tuple[str, str, str], int] = {}
    for path, shape in shapes.items():
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", path) if collapse else path
        key = (pattern, str(shape.get("kind")), f"{shape.get('in')}x{shape.get('out')}")
        rows[key] = rows.get(key, 0) + 1
    return [[pattern, kind, size, f"x{count}" if count > 1 else ""] for (pattern, kind, size), count in rows.items()]


def _render_base_detail(d: t.BaseModelDetail) -> None:
    b = d.info
    levels = ", ".join(f"{level} {count}" for level, count in d.compatible_by_level.items())
    table(None, ["field", "value"], [
        ["short name", b.short_name or "-"],
        ["name", b.name + (f" @ {b.revision}" if b.revision else "")],
        ["architecture", f"{b.architecture or '-'} ({b.model_type or '?'})"],
        ["config hash", (b.config_hash or "-")[:12]],
        ["vocab", b.vocab_size if b.vocab_size is not None else "-"],
        ["modules", b.module_count],
        ["local path", b.local_path or "-"],
        ["registered", f"{d.versions} version(s)"],
        ["compatible", f"{d.compatible_total} version(s) ({levels})"],
    ])
    if d.module_shapes:
        table("module shapes", ["module", "kind", "in x out", "count"], shape_rows(d.module_shapes))
    if d.compatible:
        table("compatible adapters", ["version", "evidence", "registered on", "status"],
              [[c.ref, ", ".join(c.levels), c.registered_base or "-", c.status] for c in d.compatible])
        if d.compatible_total > len(d.compatible):
            stdout.print(f"[dim]{len(d.compatible)} of {d.compatible_total}: adreg list --compatible-with NAME "
                         "shows them all[/]")


@base_app.command("add")
@emits(lambda b: _render_bases([b]))
def base_add(
    short_name: str = typer.Argument(..., help="The short name (a lowercase slug, e.g. llama-tiny)."),
    hub: str | None = typer.Option(None, "--hub", help="A Hub model id (org/model); only config.json is fetched."),
    revision: str | None = typer.Option(None, "--revision", help="With --hub: branch, tag or commit (pinned to sha)."),
    path: Path | None = typer.Option(None, "--path", help="A local model folder (with config.json)."),
    json_output: bool = JSON,
) -> t.BaseModelInfo:
    """Name a base model: its architecture and module shapes are read once (admins only on a server)."""
    local = str(path.expanduser().resolve()) if path is not None else None  # a server reads absolute paths only
    return _registry().add_base(short_name, hub=hub, revision=revision, path=local)


@base_app.command("show")
@emits(_render_base_detail)
def base_show(
    name: str = typer.Argument(..., help="Short name, name (Hub id or folder), name@revision."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000, help="Compatible versions to list."),
    json_output: bool = JSON,
) -> t.BaseModelDetail:
    """A base model: its module shapes, the versions registered on it and every version that fits it."""
    return _registry().base(name, limit=limit)
# -- end named bases --


# -- datasets (issue 17) --
def _render_datasets(items: list[t.DatasetInfo]) -> None:
    table(None, ["dataset", "rows", "format", "task", "columns", "size", "sha256", "created"],
          [[d.ref, d.rows, d.format, d.task_type or "-", ", ".join(d.columns), human_size(d.size_bytes),
            d.sha256[:12], d.created_at.strftime("%Y-%m-%d %H:%M")] for d in items])


def _render_dataset(d: t.DatasetInfo) -> None:
    table(None, ["field", "value"], [
        ["dataset", d.ref], ["sha256", d.sha256], ["format", d.format], ["rows", d.rows],
        ["columns", ", ".join(d.columns)], ["task", d.task_type or "-"], ["size", human_size(d.size_bytes)],
        ["source", d.source_uri or "-"], ["path", d.path],
        ["versions", ", ".join(d.versions) or "-"],
        ["linked", ", ".join(f"{x['ref']} ({x['role']})" for x in d.linked) or "-"],
        ["created", d.created_at.strftime("%Y-%m-%d %H:%M:%S") + (f" by {d.created_by}" if d.created_by else "")],
    ])


@data_app.command("register")
@emits(_render_dataset)
def data_register(
    file: Path = typer.Argument(..., help="A JSON Lines, JSON, text, CSV or parquet file."),
    name: str = typer.Option(..., "--name", "-n", help="Dataset name (a lowercase slug)."),
    task_type: str | None = typer.Option(None, "--task-type", help="Check the columns this task needs "
                                         "(CAUSAL_LM, SEQ_CLS, TOKEN_CLS, SEQ_2_SEQ_LM)."),
    json_output: bool = JSON,
) -> t.DatasetInfo:
    """Register a data file as dataset NAME (same bytes: the same version; other bytes: NAME:N+1)."""
    return _registry().register_dataset(file, name=name, task_type=task_type)


@data_app.command("list")
@emits(_render_datasets)
def data_list(name: str | None = typer.Argument(None, help="Only this dataset's versions."),
              json_output: bool = JSON) -> list[t.DatasetInfo]:
    """Every dataset version of the catalog."""
    return _registry().datasets(name)


@data_app.command("show")
@emits(_render_dataset)
def data_show(ref: str = typer.Argument(..., help="name (the latest version) or name:N"),
              json_output: bool = JSON) -> t.DatasetInfo:
    """One dataset version: sha256, rows, columns, its versions and the adapter versions linked to it."""
    return _registry().dataset(ref)


@data_app.command("link")
@emits(_render_version)
def data_link(
    ref: str = typer.Argument(..., help="The adapter version: name, name:3 or name@alias."),
    dataset: str = typer.Argument(..., help="The dataset: name or name:N."),
    role: str = typer.Option("eval", "--role", help="eval, train or heldout."),
    json_output: bool = JSON,
) -> t.AdapterVersion:
    """Link a dataset to an adapter version (eval data by default)."""
    return _registry().link_dataset(ref, dataset, role=role)
# -- end datasets --

from registry.cli_access import install  # noqa: E402  (the access commands register on the app above)

install(app, _registry, _state)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
