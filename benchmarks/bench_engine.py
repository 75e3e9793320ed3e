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

from pycontain.engine import ChildSpec, start

CASES = {
    "no namespaces": frozenset(),
    "uts ipc net mnt pid": frozenset({"uts", "ipc", "net", "mnt", "pid"}),
    "uts ipc mnt pid (no net)": frozenset({"uts", "ipc", "mnt", "pid"}),
}


def measure(fn, runs: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def show(name: str, ms: list[float]) -> None:
    q = statistics.quantiles(ms, n=4)
    print(f"{name:40s} median {statistics.median(ms):6.2f} ms  (q1 {q[0]:.2f}, q3 {q[2]:.2f}, n={len(ms)})")


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    for name, new in CASES.items():
        spec = ChildSpec(argv=["/bin/true"], new=new)
        show(f"pycontain {name}", measure(lambda spec=spec: start(spec).wait(), runs))
    if shutil.which("unshare"):
        cmd = ["unshare", "--uts", "--ipc", "--net", "--mount", "--pid", "--fork", "/bin/true"]
        show("unshare(1) uts ipc net mnt pid", measure(lambda: subprocess.run(cmd, check=True), runs))
    if shutil.which("bwrap"):
        cmd = ["bwrap", "--bind", "/", "/", "--unshare-uts", "--unshare-ipc", "--unshare-net",
               "--unshare-pid", "/bin/true"]
        show("bwrap uts ipc net mnt pid", measure(lambda: subprocess.run(cmd, check=True), runs))


if __name__ == "__main__":
    main()
