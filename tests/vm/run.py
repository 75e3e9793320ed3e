#!/usr/bin/env python3
"""Run the cgroup v2 tests (``-m v2``) inside a qemu VM with a pure cgroup v2 kernel.

This host is cgroup v1 (hybrid); the ``v2`` tests skip here. This harness
boots Debian's kernel under qemu (TCG: no KVM here) with ``cgroup_no_v1=all``
and a small initramfs, shares the host's / read-only over 9p with a tmpfs
overlay on top (so the guest runs this very Python, venv and project), runs
pytest once, and exits with pytest's exit status from inside the guest.

Usage::

    python tests/vm/run.py [pytest args...]     # e.g. -x, -k memory, tests/integration
    python tests/vm/run.py --vm-prepare         # only fetch the kernel, build the initramfs

Environment:

    PYCONTAIN_VM_TIMEOUT      whole run, in seconds (default 1200); qemu is killed after it
    PYCONTAIN_VM_MEMORY_MB    guest memory in MiB (default 2048)
    PYCONTAIN_VM_CPUS         guest CPUs (default 2)
    PYCONTAIN_VM_KERNEL_LOG   "full" to see every kernel message (default: warnings and worse)
    PYCONTAIN_VM_ALLOW_EMPTY  "1" to accept pytest's exit 5 (no test collected) as success
    PYCONTAIN_VM_APPEND       more kernel command-line words
    PYCONTAIN_VM_COMMAND      a shell command to run in the guest instead of pytest (debugging;
                              its exit status is the harness's)

Each run's console log, junit.xml and exit status are kept in
``tests/vm/cache/runs/<run>/`` (the last few runs).
"""

from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
if __name__ == "__main__":
    # Run as a script (./dev test-v2): make the project importable as the harness's package root.
    sys.path.insert(0, str(PROJECT))

from tests.vm.initramfs import ensure_initramfs  # noqa: E402
from tests.vm.kernel import CACHE, Kernel, VMSetupError, ensure_kernel  # noqa: E402

RUNS = CACHE / "runs"
KEEP_RUNS = 5
DEFAULT_TIMEOUT_S = 1200
GUEST_RUN = "/run/pycontain-vm"
GUEST_OUT = f"{GUEST_RUN}/out"
READY_MARK = b"pycontain-vm: userspace ready"
PYTEST_NO_TESTS = 5


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not (value > 0 and value != float("inf")):
        raise VMSetupError(f"{name}={raw!r} is not a positive number")
    return value


def say(msg: str) -> None:
    print(f"vm: {msg}", flush=True)


# Plugins the guest has no use for (notebooks and benchmarks don't run there;
# hypothesis's @given works without its plugin). Each costs seconds to import
# under emulation.
GUEST_NO_PLUGINS = ["cacheprovider", "nbval", "benchmark", "hypothesispytest"]


def guest_command(python: str, pytest_args: list[str]) -> str:
    """The shell command stage 2 runs in the guest (quoted for ``eval``)."""
    env = {
        "PATH": f"{os.path.dirname(python)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        # Writes land in a tmpfs that dies with the VM: compiling them is wasted time.
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYCONTAIN_IN_VM": "1",
    }
    # Pass the project's own settings (not the harness's) and CI through.
    for key, value in os.environ.items():
        if (key.startswith("PYCONTAIN_") and not key.startswith("PYCONTAIN_VM_")) or key == "CI":
            env.setdefault(key, value)
    argv = [f"{GUEST_RUN}/busybox", "env", "-i", *(f"{k}={v}" for k, v in env.items())]
    argv += [python, "-m", "pytest", "-m", "v2", f"--junitxml={GUEST_OUT}/junit.xml"]
    for plugin in GUEST_NO_PLUGINS:
        argv += ["-p", f"no:{plugin}"]
    return shlex.join(argv + pytest_args)


def names_a_path(args: list[str]) -> bool:
    """True when some argument is a test path or node id (the caller chose what to collect)."""
    return any(not a.startswith("-") and (PROJECT / a.split("::")[0]).exists() for a in args)


def v2_test_files(python: str, pytest_args: list[str]) -> list[str] | None:
    """The files that hold v2 tests, as collected on the host (fast), or None if that failed.

    The guest then imports only those files: collecting the whole tree there,
    where every import runs emulated and reads over 9p, costs minutes.
    """
    cmd = [python, "-m", "pytest", "--collect-only", "-q", "-m", "v2", "-p", "no:cacheprovider", *pytest_args]
    res = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True, check=False)
    if res.returncode not in (0, PYTEST_NO_TESTS):
        say(f"host-side collection failed (exit {res.returncode}); the guest collects everything")
        sys.stdout.write(res.stdout[-3000:] + res.stderr[-2000:])
        return None
    files = {line.split("::")[0] for line in res.stdout.splitlines() if "::" in line}
    return sorted(files)


def qemu_argv(kernel: Kernel, initrd: Path, out: Path) -> list[str]:
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        raise VMSetupError(
            "qemu-system-x86_64 not found; hint: apt-get install qemu-system-x86 (./dev setup does)"
        )
    memory = int(_env_number("PYCONTAIN_VM_MEMORY_MB", 2048))
    cpus = int(_env_number("PYCONTAIN_VM_CPUS", 2))
    cmdline = [
        "console=ttyS0",
        # The point of the VM: every controller on the one v2 hierarchy.
        "cgroup_no_v1=all",
        "rdinit=/init",
        # A panic reboots at once, and -no-reboot turns that into qemu exiting.
        "panic=-1",
        # Emulated (TCG) page-table switches are costly; this VM guards nothing.
        "mitigations=off",
        # TCG's TSC follows the host's monotonic clock on every vCPU, but the
        # kernel's sync check fails under emulation and falls back to HPET:
        # every clock read then traps to qemu (no vDSO), ~2x slower here.
        "tsc=reliable",
        "ignore_loglevel" if os.environ.get("PYCONTAIN_VM_KERNEL_LOG") == "full" else "loglevel=4",
        *os.environ.get("PYCONTAIN_VM_APPEND", "").split(),
    ]
    return [
        qemu,
        "-accel", "tcg",
        "-cpu", os.environ.get("PYCONTAIN_VM_CPU_MODEL", "max"),
        "-smp", str(cpus),
        "-m", str(memory),
        "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none",
        "-monitor", "none",
        "-serial", "stdio",
        "-kernel", str(kernel.boot_image),
        "-initrd", str(initrd),
        "-append", " ".join(cmdline),
        "-device", "virtio-rng-pci",
        # The host's / read-only: the guest's lower layer (Python, venv, project).
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        # This run's directory read-write: job.env in; rc, junit.xml out.
        "-virtfs", f"local,path={out},mount_tag=out,security_model=none",
    ]  # fmt: skip


def new_run_dir() -> Path:
    """A fresh directory for this run; old ones are pruned, but never one that may still run."""
    RUNS.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in RUNS.iterdir() if p.is_dir())
    recent = time.time() - 2 * DEFAULT_TIMEOUT_S
    for p in old[: max(0, len(old) - (KEEP_RUNS - 1))]:
        if p.stat().st_mtime < recent:
            shutil.rmtree(p, ignore_errors=True)
    run = RUNS / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")
    run.mkdir()
    return run


def _die_with_parent() -> None:
    """In qemu's child, before exec: SIGKILL it if the harness dies (even by SIGKILL)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def prepare() -> tuple[Kernel, Path]:
    kernel = ensure_kernel()
    return kernel, ensure_initramfs(kernel)


def run(pytest_args: list[str]) -> int:
    t_start = time.monotonic()
    timeout = _env_number("PYCONTAIN_VM_TIMEOUT", DEFAULT_TIMEOUT_S)
    kernel, initrd = prepare()
    # Not resolved through symlinks: a venv's bin/python must stay the venv's.
    python = os.path.abspath(sys.executable)
    command = os.environ.get("PYCONTAIN_VM_COMMAND")
    if not command and not names_a_path(pytest_args):
        files = v2_test_files(python, pytest_args)
        if files == []:
            say("no v2 test found on the host; nothing to run in the VM")
            return _no_tests()
        if files:
            say(f"v2 tests in: {' '.join(files)}")
            pytest_args = [*pytest_args, *files]
    out = new_run_dir()
    job = {
        "PROJECT": str(PROJECT),
        "MODULES_DIR": str(kernel.modules_dir),
        "COMMAND": command or guest_command(python, pytest_args),
    }
    (out / "job.env").write_text("".join(f"{k}={shlex.quote(v)}\n" for k, v in job.items()))
    argv = qemu_argv(kernel, initrd, out)
    log_path = out / "console.log"
    say(f"kernel {kernel.version}, initramfs {initrd.name}, run dir {out}")
    say(f"booting: {shlex.join(argv)}")

    t_boot = time.monotonic()
    ready_at: list[float] = []
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    # A CI runner stopping us with SIGTERM/SIGHUP must not leave qemu behind.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    assert proc.stdout is not None
    stream = proc.stdout

    def pump() -> None:
        # Console lines go to the terminal as they come and to the run's log.
        with open(log_path, "wb") as log:
            for line in iter(stream.readline, b""):
                if not ready_at and READY_MARK in line:
                    ready_at.append(time.monotonic())
                log.write(line)
                log.flush()
                sys.stdout.buffer.write(line.replace(b"\r\n", b"\n"))
                sys.stdout.buffer.flush()

    reader = threading.Thread(target=pump, name="vm-console", daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t_start)))
    except subprocess.TimeoutExpired:
        timed_out = True
    except KeyboardInterrupt:
        say(f"interrupted: killing qemu (pid {proc.pid})")
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
    t_end = time.monotonic()

    boot = f"{ready_at[0] - t_boot:.1f} s" if ready_at else "n/a"
    say(
        f"qemu exited {proc.returncode}; boot to userspace {boot}, VM {t_end - t_boot:.1f} s, "
        f"total {t_end - t_start:.1f} s; console log {log_path}"
    )
    if timed_out:
        say(f"FAILED: timed out after {timeout:.0f} s (PYCONTAIN_VM_TIMEOUT); qemu (pid {proc.pid}) killed")
        return 1
    try:
        rc = int((out / "rc").read_text().strip())
    except (FileNotFoundError, ValueError):
        say(f"FAILED: the guest reported no exit status (no {out / 'rc'}); see the console log above")
        return 1
    if rc == PYTEST_NO_TESTS:
        return _no_tests()
    say(f"{'passed' if rc == 0 else 'FAILED'}: pytest in the guest exited {rc}")
    return rc


def _no_tests() -> int:
    if os.environ.get("PYCONTAIN_VM_ALLOW_EMPTY") == "1":
        say("no v2 test was collected; accepted (PYCONTAIN_VM_ALLOW_EMPTY=1)")
        return 0
    say(f"FAILED: no v2 test was collected (pytest exit {PYTEST_NO_TESTS})")
    return PYTEST_NO_TESTS


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["--vm-prepare"]:
            kernel, initrd = prepare()
            say(f"ready: kernel {kernel.version} at {kernel.root}, initramfs {initrd}")
            return 0
        return run(argv)
    except VMSetupError as e:
        say(f"FAILED to set up the VM: {e}")
        return 1
    except KeyboardInterrupt:
        say("FAILED: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
