"""Smoke test of the benchmark harness: one quick start-to-exit run, end to end.

Runs ``benchmarks/run.py --quick --only start`` as a user would and checks the
results it writes: a median for every peer that is installed, the table and
the plot, and nothing left behind. No timing is asserted (DESIGN.md section 8):
the machine is shared and noisy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PEERS = {"crun": "crun", "runc": "runc", "podman": "podman", "bwrap": "bwrap"}


@pytest.mark.slow
def test_quick_start_run_writes_medians_for_every_available_peer(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only", "start",
         "--out", str(out), "--no-docs", "--no-install"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = {(r["group"], r["name"]): r for r in results["cases"]}
    # --only start: the start groups, and any other module's groups named *start*.
    assert {"start-warm", "start-idle"} <= {r["group"] for r in results["cases"]}
    assert all("start" in r["group"] or "start" in r["name"] for r in results["cases"])
    available = [name for name, cmd in PEERS.items() if shutil.which(cmd)]
    assert available, "no peer installed: the harness would measure nothing"
    for group in ("start-warm", "start-idle"):
        for name in [*available, "python3 -I -S -c pass", "python3 -c pass"]:
            row = rows[(group, name)]
            assert row["status"] == "ok", (group, name, row["reason"])
            assert row["n"] == results["repeat"] == 3
            assert row["median"] is not None and row["median"] > 0
            assert row["p95"] >= row["median"]
            assert row["ratio"] is not None
        # pycontain's own cases are listed, measured or skipped with a reason.
        assert any(name.startswith("pycontain") for _g, name in rows if _g == group)

    assert (out / "table.md").read_text().count("| crun |") in (0, 2)
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["leftovers"] == {"cgroups": [], "mounts": [], "host_paths": [], "files": []}
    assert results["machine"]["cgroup_mode"] in ("v1", "v2", "hybrid")
