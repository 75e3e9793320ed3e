"""The pycontain demo: what this host can do, then a container seen from inside,
a memory limit enforced, and live usage as a table."""

import sys

import pycontain

report = pycontain.doctor()
print(report)
print()
if pycontain.cgroup_version() is None or not report.ok("root"):
    print("This host cannot isolate (see above); the rest of the demo needs root.")
    sys.exit(0)

print("== a container, seen from inside")
r = pycontain.run(["sh", "-c", "echo hostname: $(hostname); echo pid: $$; "
                   "grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; "
                   "echo interfaces: $(ls /sys/class/net)"], hostname="demo", memory="64M")
print(r.stdout)

print("== a memory bomb under a 64 MiB limit")
r = pycontain.run(["python3", "-c", "b = bytearray(512 << 20)"], memory="64M")
print(f"returncode {r.returncode}, oom_killed {r.oom_killed}, peak {r.usage['mem_peak_bytes'] / 2**20:.1f} MiB")
print()

print("== CPU quota 0.5: usage sampled every 0.1 s")
r = pycontain.run(["python3", "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"], cpus=0.5)
print(r.stats[["t_s", "cpu_s", "cpu_percent", "mem_bytes"]].round(2).tail(5).to_string(index=False))
print()
print("== the namespaces on this host (like lsns)")
print(pycontain.namespaces().head(8).to_string(index=False))
