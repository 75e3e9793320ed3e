"""Engine start-to-exit latency: fork, namespaces, exec /bin/true, wait.

Usage (root): python3 benchmarks/bench_engine.py [runs]
Prints the median and quartiles in ms for a few namespace sets, next to
``unshare(1)`` and ``bwrap`` doing the same where installed (ratios matter
more than absolute numbers on a shared machine).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from pycontain.engine import ChildSpec, start

CASES = {
    "no namespaces": frozenset(),
    "uts ipc net mnt pid": frozenset({"uts", "ipc", "net", "mnt", "pid"}),
    "uts ipc mnt pid (no net)": frozenset({"uts", "ipc", "mnt", "pid"}),
}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    cases: dict[str, Callable[[], object]] = {}
    for name, new in CASES.items():
        spec = ChildSpec(argv=["/bin/true"], new=new)
        cases[f"pycontain {name}"] = lambda spec=spec: start(spec).wait()
    if shutil.which("unshare"):
        cmd1 = ["unshare", "--uts", "--ipc", "--net", "--mount", "--pid", "--fork", "/bin/true"]
        cases["unshare(1) uts ipc net mnt pid"] = lambda: subprocess.run(cmd1, check=True)
    if shutil.which("bwrap"):
        cmd2 = ["bwrap", "--bind", "/", "/", "--unshare-uts", "--unshare-ipc", "--unshare-net",
                "--unshare-pid", "/bin/true"]
        cases["bwrap uts ipc net mnt pid"] = lambda: subprocess.run(cmd2, check=True)
    # Round-robin, so every case sees the same load on a shared machine.
    times: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(runs + 3):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(times.get("unshare(1) uts ipc net mnt pid") or [float("nan")])
    for name, ms in times.items():
        q = statistics.quantiles(ms, n=4)
        med = statistics.median(ms)
        print(f"{name:40s} median {med:6.2f} ms  (q1 {q[0]:.2f}, q3 {q[2]:.2f}, n={len(ms)})"
              f"  x{med / base:.2f} of unshare(1)")


if __name__ == "__main__":
    main()
