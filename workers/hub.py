"""Publish jobs: push a version to a Hub repository with a model card that records its base, lineage and evidence.

Hub calls go through :mod:`registry.hub_client` (retries, error mapping, the token never written anywhere).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import yaml
from sqlalchemy import select

from registry import models as m
from registry import queries
from registry.base_identity import card_base_model
from registry.errors import RegistryError
from registry.hub_client import api, endpoint, hub_call
from registry.inspect import WEIGHTS_FILE
from registry.jobs import PublishSpec
from registry.lineage_render import to_mermaid
from workers.context import JobContext, complete
from workers.host import LocalHost

log = logging.getLogger("adreg.hub")

# -- publishing -------------------------------------------------------------------------------------


def _card_context(session: Any, row: m.AdapterVersion) -> dict[str, Any]:
    adapter = session.get(m.Adapter, row.adapter_id)
    base = session.get(m.BaseModelRecord, row.base_model_id) if row.base_model_id else None
    graph = queries.lineage(session, row.id)
    parents = []
    e, pv, pa = m.LineageEdge, m.AdapterVersion, m.Adapter
    parent_rows = session.execute(
        select(e, pa.name, pv.version, pv.weights_sha256)
        .join(pv, pv.id == e.parent_id).join(pa, pa.id == pv.adapter_id)
        .where(e.child_id == row.id).order_by(e.position)
    )
    for edge, pname, pversion, psha in parent_rows:
        pub = session.scalars(select(m.Publication).where(m.Publication.version_id == edge.parent_id)
                              .order_by(m.Publication.id.desc())).first()
        parents.append({"ref": f"{pname}:{pversion}", "sha256": psha, "relation": edge.relation,
                        "weight": edge.weight, "params": edge.params or {},
                        "hub": f"{pub.repo_id}@{pub.commit_oid}" if pub else None})
    validated = session.scalars(select(m.Compatibility).where(
        m.Compatibility.version_id == row.id, m.Compatibility.level == "validated")).first()
    made_by = session.scalars(select(m.Job).where(
        m.Job.result_version_id == row.id, m.Job.kind.in_(("merge", "train")), m.Job.status == "succeeded")).first()
    return {"name": adapter.name, "ref": f"{adapter.name}:{row.version}", "row": row, "base": base, "graph": graph,
            "parents": parents, "validation": validated.evidence if validated else None,
            "job": {"kind": made_by.kind, "report": made_by.report, "spec": made_by.spec} if made_by else None}


def _recipe(ctx: dict[str, Any]) -> dict[str, Any] | None:
    merges = [p for p in ctx["parents"] if p["relation"] == "merge"]
    if merges:
        params = {k: v for k, v in merges[0]["params"].items() if k not in ("method", "allow_cross_base")}
        step = {"merge": {"sources": [p["ref"] for p in merges], "weights": [p["weight"] for p in merges],
                          "method": merges[0]["params"].get("method"), "params": params, "name": ctx["name"]}}
        return {"name": f"rebuild-{ctx['name']}", "steps": [step]}
    job = ctx["job"]
    if job and job["kind"] == "train":
        spec = job["spec"]
        step = {"train": {"sources": [s["ref"] for s in spec.get("sources", [])], "data": spec["data"]["path"],
                          "steps": spec["steps"], "lr": spec["lr"], "seed": spec["seed"], "name": ctx["name"]}}
        return {"name": f"rebuild-{ctx['name']}", "steps": [step]}
    return None


def build_card(ctx: dict[str, Any], base_hub_id: str) -> Any:
    """The model card: metadata the Hub's model tree reads, and a body with lineage, recipe and evidence."""
    from huggingface_hub import ModelCard, ModelCardData

    row = ctx["row"]
    relation = "merge" if any(p["relation"] == "merge" for p in ctx["parents"]) else (
        "finetune" if ctx["parents"] or (ctx["job"] and ctx["job"]["kind"] == "train") else None)
    tags = ["lora", "peft", "adapter-registry"] + ([relation] if relation else [])
    version_tags = {t.key: t.value for t in ctx["tags"]}
    data = ModelCardData(
        library_name="peft", base_model=base_hub_id, base_model_relation="adapter", tags=tags,
        license=version_tags.get("license"), language=version_tags.get("lang"),
        pipeline_tag="text-generation" if row.task_type == "CAUSAL_LM" else None,
    )
    lines = [f"# {ctx['name']} (version {row.version})", "",
             f"A LoRA adapter (r={row.r}, alpha={row.lora_alpha:g}, targets: {', '.join(row.target_modules)}) "
             f"for [`{base_hub_id}`](https://huggingface.co/{base_hub_id}), published by adapter-registry.", "",
             f"- weights sha256: `{row.weights_sha256}`", f"- parameters: {row.param_count:,}", ""]
    if ctx["parents"]:
        lines += ["## Lineage", "", "| parent | sha256 / Hub commit | relation | weight |", "|---|---|---|---|"]
        for p in ctx["parents"]:
            where = f"`{p['hub']}`" if p["hub"] else f"`{p['sha256'][:16]}…`"
            weight = "" if p["weight"] is None else f"{p['weight']:g}"
            lines.append(f"| {p['ref']} | {where} | {p['relation']} | {weight} |")
        lines += ["", "```mermaid", to_mermaid(ctx["graph"]).rstrip(), "```", ""]
    recipe = _recipe(ctx)
    if recipe:
        lines += ["## Recipe", "", "Re-run with `adreg run recipe.yaml`:", "", "```yaml",
                  yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    job = ctx["job"]
    if job and job["kind"] == "merge":
        overall = job["report"].get("overall", {})
        merge = next((p for p in ctx["parents"] if p["relation"] == "merge"), None)
        lines += ["## Merge", "", f"- method: `{merge['params'].get('method') if merge else '?'}`",
                  f"- parameters: `{json.dumps(merge['params'] if merge else {}, sort_keys=True)}`",
                  f"- reconstruction error vs the exact weighted sum: `{json.dumps(overall, sort_keys=True)}`", ""]
    if job and job["kind"] == "train":
        rep, spec = job["report"], job["spec"]
        dataset = rep.get("dataset", {})
        lines += ["## Training", "",
                  f"- steps: {rep.get('steps')}, lr: {spec.get('lr')}, batch size: {spec.get('batch_size')}",
                  f"- dataset sha256: `{dataset.get('sha256')}`, rows: {dataset.get('rows')}",
                  f"- eval loss: {rep.get('eval_loss_before', float('nan')):.4f} -> "
                  f"{rep.get('eval_loss_after', float('nan')):.4f}", ""]
    if ctx["validation"]:
        v = ctx["validation"]
        lines += ["## Validation", "", f"- layer status: `{json.dumps(v.get('layer_status', {}), sort_keys=True)}`",
                  f"- logits: `{json.dumps(v.get('logits', {}), sort_keys=True)}`"]
        if "distance_from_parents" in v:
            lines.append(f"- probe distance from parents: `{json.dumps(v['distance_from_parents'], sort_keys=True)}`")
        if "exact_check" in v:
            lines.append(f"- exact check: `{json.dumps(v['exact_check'], sort_keys=True)}`")
        lines.append("")
    lines += ["## Use with PEFT", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM", "",
              f'base = AutoModelForCausalLM.from_pretrained("{base_hub_id}")',
              'model = PeftModel.from_pretrained(base, "<this repo>")', "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def run_publish(host: LocalHost, ctx: JobContext, spec: PublishSpec) -> None:
    """Push a version to the Hub (on a host with the catalog: the server runs it for remote workers)."""
    from huggingface_hub import CommitOperationAdd

    svc = host.svc
    target = spec.target
    with svc.sessions() as s:
        row = s.get(m.AdapterVersion, spec.version_id)
        if row is None:
            raise RegistryError(f"version {spec.ref} no longer exists")
        card_ctx = _card_context(s, row)
        card_ctx["tags"] = list(s.scalars(select(m.Tag).where(m.Tag.version_id == row.id)))
        existing = s.scalars(select(m.Publication).where(
            m.Publication.version_id == row.id, m.Publication.repo_id == target.repo_id,
            m.Publication.branch == target.branch)).first()
    base = card_ctx["base"]
    base_id = card_base_model(base.name if base else None, target.base_model_id, spec.ref)

    label = f"publish {spec.ref} to {target.repo_id}"
    url = f"{(endpoint() or 'https://huggingface.co').rstrip('/')}/{target.repo_id}/tree/{target.branch}"
    remote_sha, remote_commit = _remote_weights(target.repo_id, target.branch)
    if remote_sha == row.weights_sha256 and not target.create_pr:
        # Already there (by us or by hand): record it, make no commit.
        with svc.transaction() as s:
            if existing is None:
                s.add(m.Publication(version_id=row.id, repo_id=target.repo_id, branch=target.branch,
                                    commit_oid=remote_commit, url=url, weights_sha256=row.weights_sha256,
                                    published_at=m.utcnow()))
            commit_oid = existing.commit_oid if existing is not None else remote_commit
            complete(svc, ctx, s, result_version_id=row.id, progress_message="already published",
                     report={"noop": True, "repo_id": target.repo_id, "branch": target.branch,
                             "commit": commit_oid, "url": url})
        return

    ctx.progress(0.1, "preparing files", force=True)
    folder = svc.store.path(row.storage_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base_id
    config["revision"] = base.revision if base is not None and base.name == base_id else None
    card = build_card(card_ctx, base_id)
    ops = [
        CommitOperationAdd(path_in_repo=WEIGHTS_FILE, path_or_fileobj=str(folder / WEIGHTS_FILE)),
        CommitOperationAdd(path_in_repo="adapter_config.json",
                           path_or_fileobj=(json.dumps(config, indent=2, sort_keys=True) + "\n").encode()),
        CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()),
    ]
    ctx.check_cancel()
    client = api()
    hub_call(label, lambda: client.create_repo(target.repo_id, private=target.private, exist_ok=True))
    if target.branch != "main":
        hub_call(label, lambda: client.create_branch(target.repo_id, branch=target.branch, exist_ok=True))
    ctx.progress(0.3, "uploading", force=True)
    commit = hub_call(label, lambda: client.create_commit(
        target.repo_id, operations=ops, revision=target.branch, create_pr=target.create_pr,
        commit_message=f"adapter-registry: {spec.ref}",
        commit_description=f"weights sha256 {row.weights_sha256}",
    ))
    with svc.transaction() as s:
        if existing is not None:
            s.delete(s.get(m.Publication, existing.id))
            s.flush()
        pub = m.Publication(version_id=row.id, repo_id=target.repo_id, branch=target.branch, commit_oid=commit.oid,
                            url=url, pr_url=getattr(commit, "pr_url", None), weights_sha256=row.weights_sha256,
                            published_at=m.utcnow())
        s.add(pub)
        complete(svc, ctx, s, result_version_id=row.id, progress_message="published",
                 report={"noop": False, "repo_id": target.repo_id, "branch": target.branch, "commit": commit.oid,
                         "url": url, "pr_url": getattr(commit, "pr_url", None)})


def _remote_weights(repo_id: str, branch: str) -> tuple[str | None, str | None]:
    """(sha256 of the weights file, commit sha) at the head of ``branch``; (None, None) if absent."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    def read():  # type: ignore[no-untyped-def]
        try:
            return api().model_info(repo_id, revision=branch, files_metadata=True)
        except (RepositoryNotFoundError, RevisionNotFoundError):
            return None

    info = hub_call(f"read {repo_id}", read)
    if info is None:
        return None, None
    for sibling in info.siblings or []:
        if sibling.rfilename == WEIGHTS_FILE and sibling.lfs is not None:
            return sibling.lfs.sha256, str(info.sha)
    return None, str(info.sha)
