"""Direct fork vs zygote, for a small and a big caller.

Usage (root): python3 benchmarks/bench_zygote.py [runs] [MiB of caller data]
Round-robin per iteration, so both see the same load on a shared machine.
"""

from __future__ import annotations

import statistics
import sys
import time

from pycontain.engine import ChildSpec, Zygote, start

NEW = frozenset({"uts", "ipc", "net", "mnt", "pid"})


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    with Zygote() as z:
        for label, size in (("small caller", 0), (f"caller with {mib} MiB", mib << 20)):
            ballast = bytearray(size)  # zero-filled: every page resident, like a real heap
            cases = {
                "direct true": lambda: start(ChildSpec(argv=["/bin/true"])).wait(),
                "zygote true": lambda: start(ChildSpec(argv=["/bin/true"]), zygote=z).wait(),
                "direct 5 ns": lambda: start(ChildSpec(argv=["/bin/true"], new=NEW)).wait(),
                "zygote 5 ns": lambda: start(ChildSpec(argv=["/bin/true"], new=NEW), zygote=z).wait(),
            }
            times: dict[str, list[float]] = {k: [] for k in cases}
            for i in range(runs + 3):
                for name, fn in cases.items():
                    t0 = time.perf_counter()
                    fn()
                    if i >= 3:
                        times[name].append((time.perf_counter() - t0) * 1000)
            for name, ms in times.items():
                print(f"{label:22s} {name:14s} median {statistics.median(ms):7.2f} ms")
            del ballast


if __name__ == "__main__":
    main()
