"""The `adreg` command line: JSON output, human output, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_issue_walkthrough(adreg, tiny):
    adreg("register", str(tiny["tone"]), "--name", "support-tone", "--tag", "team=cx", "--tag", "lang=en")
    adreg("register", str(tiny["legal"]), "--name", "legal", "--base-path", str(tiny["llama"]))
    listed = json.loads(adreg("list", "--base-model", str(tiny["llama"]), "--tag", "team=cx", "--json").stdout)
    assert [v["ref"] for v in listed["items"]] == ["support-tone:1"] and listed["total"] == 1
    shown = json.loads(adreg("show", "support-tone:1", "--json").stdout)
    assert shown["tags"] == {"team": "cx", "lang": "en"} and shown["r"] == 4
    adreg("alias", "set", "support-tone:1", "production")
    human = adreg("show", "support-tone@production").stdout
    assert "support-tone:1" in human and "production" in human and "[exact]" in human
    assert json.loads(adreg("tag", "support-tone:1", "reviewed=yes", "--json").stdout)["tags"]["reviewed"] == "yes"
    graph = json.loads(adreg("lineage", "support-tone:1", "--json").stdout)
    assert graph["root"] == "support-tone:1" and graph["edges"] == []
    bases = json.loads(adreg("base", "list", "--json").stdout)
    assert [b["architecture"] for b in bases] == ["LlamaForCausalLM"] and bases[0]["adapter_versions"] == 2


def test_user_errors_exit_1_without_traceback(adreg, tiny, tmp_path):
    result = adreg("show", "nope:1", code=1)
    assert "no adapter named 'nope'" in result.stderr and "Traceback" not in result.stderr + result.stdout
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "pickle" / "adapter_model.bin").write_bytes(b"x")
    result = adreg("register", str(tmp_path / "pickle"), "--name", "p", code=1)
    assert "safetensors only" in result.stderr and "hint:" in result.stderr
    result = adreg("register", str(tiny["tone"]), "--name", "../evil", code=1)
    assert "not allowed" in result.stderr
    assert adreg("list", "--sort", "bogus", code=1).stderr.startswith("error:")
    adreg("tag", "x:1", "novalue", code=1)


def test_usage_errors_exit_2(adreg):
    adreg("show", code=2)
    adreg("list", "--limit", "0", code=2)


def test_real_entry_point_exit_codes(tmp_path):
    env = {**os.environ, "ADREG_HOME": str(tmp_path / "h")}
    exe = [sys.executable, "-m", "registry.cli"]
    ok = subprocess.run([*exe, "list", "--json"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["total"] == 0
    bad = subprocess.run([*exe, "show", "ghost"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "ghost" in bad.stderr
    usage = subprocess.run([*exe, "frobnicate"], env=env, capture_output=True, text=True)
    assert usage.returncode == 2
