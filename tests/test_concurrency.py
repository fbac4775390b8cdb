"""Concurrent registrations from separate processes against the real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time

from test_catalog import perturbed

from registry import Registry

WORKER = """
import sys, time
from pathlib import Path
from registry import Registry
url, home, folder, shared, go = sys.argv[1:6]
reg = Registry(url, home=home)
while not Path(go).exists():
    time.sleep(0.005)
mine = reg.register(folder, name="tone", base="org/base")
same = reg.register(shared, name="shared", base="org/base")
print(mine.version, same.version)
"""


def test_eight_processes_get_distinct_consecutive_versions(pg_schema_url, tiny, tmp_path):
    Registry.init(pg_schema_url)
    folders = [perturbed(tiny["tone"], tmp_path / f"a{i}", 1.0 + (i + 1) / 8) for i in range(8)]
    go = tmp_path / "go"
    home = tmp_path / "home"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, pg_schema_url, str(home), str(f), str(tiny["tone2"]), str(go)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for f in folders
    ]
    time.sleep(0.5)
    go.touch()
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    versions = sorted(int(out.split()[0]) for out, _ in results)
    assert versions == list(range(1, 9))
    assert {out.split()[1] for out, _ in results} == {"1"}
    reg = Registry(pg_schema_url, home=home)
    assert [v.version for v in reg.versions_of("tone")] == list(range(1, 9))
    assert len(reg.versions_of("shared")) == 1
    assert len({v.weights_sha256 for v in reg.versions_of("tone")}) == 8
    reg.close()
