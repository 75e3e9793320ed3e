"""The notebook measurements of issue #7 ("Notebook experience", Performance).

Every cell runs through a real Jupyter kernel (ipykernel, driven by
jupyter_client, as the ``cell`` group of bench_pycontain.py), so a number is
what a notebook user waits for, round trip included. Each kernel is
dedicated to one kind of data, so the data sits in the kernel for the whole
run and only the cell differs between cases:

* ``cell-in``: a kernel holding a 100 MiB pandas DataFrame ``df``
  (1,310,720 rows x 10 float64 columns). ``x = len(df)`` as a plain cell
  (the baseline), under ``%%container`` without sending ``df`` (what the
  magic costs a kernel of that size), and under ``%%container --in df`` (the
  same plus pickling ``df`` in and unpickling it inside).
* ``cell-snapshot``: a trivial ``%%container --snapshot`` cell (``pass``) in
  a kernel with no data (the baseline), and in a kernel holding 1 GiB (a
  ``bytearray`` filled with ones: every page touched, 4 KiB pages, since
  CPython's allocator does not ask for transparent huge pages); the same
  without ``--snapshot`` in the 1 GiB kernel beside it.
* ``cell-podman``: the same trivial cell through podman, from a cell of the
  kernel with no data: ``podman run --rm <python image> python3 -c pass``,
  started with ``subprocess.run`` inside the cell (as ``!podman run ...``
  would), beside ``pass`` as a plain cell (the baseline) and under
  ``%%container`` in that kernel. (A group of its own: in ``cell`` the
  podman case, discovered first, would become that group's baseline.)
  The image holds the host's own Python (interpreter, standard library,
  shared libraries: see :func:`build_python_rootfs`), imported into the
  run's private podman store with ``podman import``; nothing is downloaded.
* ``sampler``: what ``Container.monitor(interval=0.1)`` costs the process
  that runs it. A busybox container runs ``sleep``; for a few seconds the
  harness process sleeps too, with or without the monitor sampling that
  container. The value is the process's CPU time over that window in percent
  of one CPU (``time.process_time``); the monitor case adds the sampler
  thread's own CPU time (its thread CPU clock) and the samples taken per
  second as extras. Issue #7 aims at under 1 %.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from typing import Any

from benchmarks.bench_pycontain import (
    NOT_YET,
    RunningContainer,
    _has,
    _Kernel,
    _pycontain_env,
)
from benchmarks.measure import Case, skipped
from benchmarks.peers import Workspace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_IMAGE = "localhost/pycontain-bench/python:latest"
#: 100 MiB of float64: rows x columns x 8 bytes.
DF_ROWS, DF_COLS = 1_310_720, 10
BIG_BYTES = 1 << 30
SAMPLER_INTERVAL_S = 0.1
SAMPLER_UNIT = "% CPU"

# Standard-library parts a `python3 -c pass` never loads; left out of the image.
_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idlelib", "tkinter", "turtledemo",
                "ensurepip", "lib2to3", "pydoc_data", "distutils", "unittest"}


# -- kernels --------------------------------------------------------------------------


class _NotebookKernel(_Kernel):
    """bench_pycontain's kernel, interrupted when a cell times out: the error
    names the cell, and the kernel is idle again for the next case."""

    def execute(self, code: str) -> None:
        try:
            super().execute(code)
        except TimeoutError:
            self.km.interrupt_kernel()  # the stop button: %%container kills its container
            try:
                self.kc.get_shell_msg(timeout=30)  # the interrupted cell's reply
            except Exception:
                pass
            raise TimeoutError(f"cell {code.splitlines()[0][:60]!r} did not finish within 60 s; interrupted") from None


def _kernel(ws: Workspace, prelude: str) -> tuple[_Kernel, Any]:
    """A kernel with pycontain's magics loaded and ``prelude`` run, and a
    setup function that starts it once (shared by the cases that use it)."""
    kernel = _NotebookKernel()
    ws.on_close(kernel.stop)
    ready: list[bool] = []

    def setup() -> None:
        if ready:
            return
        kernel.start()
        # The kernel imports this checkout's pycontain, wherever run.py was started from.
        kernel.execute(f"import sys\nif {REPO!r} not in sys.path:\n    sys.path.insert(0, {REPO!r})")
        kernel.execute("%load_ext pycontain")
        if prelude:
            kernel.execute(prelude)
        ready.append(True)

    return kernel, setup


def _cell_in_cases(ws: Workspace) -> list[Case]:
    kernel, setup = _kernel(ws, (
        "import numpy as np, pandas as pd\n"
        f"df = pd.DataFrame(np.random.default_rng(0).random(({DF_ROWS}, {DF_COLS})))\n"
        f"assert df.memory_usage(index=False).sum() == {DF_ROWS * DF_COLS * 8}\n"
    ))
    body = "x = len(df)"
    return [
        Case("plain cell (x = len(df))", "cell-in", run=lambda: kernel.execute(body), setup=setup,
             teardown=kernel.stop, warmup=3,
             note="reference: `x = len(df)` in a kernel holding a 100 MiB DataFrame `df`"),
        Case("%%container (x = 1, df stays out)", "cell-in", run=lambda: kernel.execute("%%container\nx = 1"),
             setup=setup, warmup=2,
             note="the magic alone in the same kernel: `df` is not sent"),
        Case("%%container --in df (x = len(df))", "cell-in",
             run=lambda: kernel.execute(f"%%container --in df\n{body}"), setup=setup, warmup=2,
             note="`df` (100 MiB, 1310720 x 10 float64) pickled in, unpickled inside the container"),
    ]


def _cell_snapshot_cases(ws: Workspace, small: _Kernel, small_setup: Any) -> list[Case]:
    big, big_setup = _kernel(ws, (
        # bytearray repetition allocates and writes every byte: all pages
        # resident, on 4 KiB pages (no madvise(MADV_HUGEPAGE) from CPython).
        f"_pcb_big = bytearray(b'\\x01') * {BIG_BYTES}\n"
        f"assert len(_pcb_big) == {BIG_BYTES}\n"
    ))
    return [
        Case("%%container --snapshot (no data)", "cell-snapshot",
             run=lambda: small.execute("%%container --snapshot\npass"), setup=small_setup,
             teardown=small.stop, warmup=2,
             note="reference: `pass` with --snapshot in a kernel holding no data"),
        Case("%%container --snapshot (1 GiB in the kernel)", "cell-snapshot",
             run=lambda: big.execute("%%container --snapshot\npass"), setup=big_setup, teardown=big.stop, warmup=2,
             note="the same in a kernel holding a 1 GiB bytearray (every 4 KiB page touched)"),
        Case("%%container (1 GiB in the kernel)", "cell-snapshot",
             run=lambda: big.execute("%%container\npass"), setup=big_setup, warmup=2,
             note="the same kernel, without --snapshot"),
    ]


# -- podman: a python image from the host's own files ---------------------------------------


def _links(path: str, root: str) -> None:
    """Recreate under ``root`` every symlink that ``path`` goes through on the
    host (e.g. /lib -> usr/lib), at its real location, following chains."""
    cur = "/"
    for part in [p for p in path.split("/") if p]:
        cur = os.path.join(cur, part)
        if not os.path.islink(cur):
            continue
        dst = root + os.path.join(os.path.realpath(os.path.dirname(cur)), part)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        target = os.readlink(cur)
        if not os.path.lexists(dst):
            os.symlink(target, dst)
        _links(os.path.normpath(os.path.join(os.path.dirname(cur), target)), root)
        cur = os.path.realpath(cur)


def _mirror(path: str, root: str) -> None:
    """Copy the host's ``path`` (a file or a tree) into ``root`` at the same
    place. Writes go only to real paths under ``root`` (a symlink copied in
    is never followed), so nothing outside ``root`` is touched."""
    _links(path, root)
    real = os.path.realpath(path)
    dst = root + real
    if os.path.isdir(real):
        def ignore(_d: str, names: list[str]) -> set[str]:
            return {n for n in names if n in _STDLIB_SKIP or n.startswith("config-")}

        shutil.copytree(real, dst, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(real, dst)


def _host_python() -> str:
    """The interpreter the image gets: the distribution's, else this one's base."""
    for cand in ("/usr/bin/python3", os.path.join(sys.base_prefix, "bin", "python3")):
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    raise RuntimeError("no python3 interpreter on the host to build the image from")


def build_python_rootfs(dest: str, python: str) -> None:
    """A root file system that runs ``python -c pass``: the interpreter, its
    standard library (without tests, IDLE, tkinter, site-packages) and
    lib-dynload, and every shared library they need (``ldd``), all at their
    host paths, with /tmp. Copied from this host; nothing is downloaded."""
    probe = subprocess.run([python, "-I", "-S", "-c", "import sys; print('\\n'.join(sys.path))"],
                           capture_output=True, text=True, check=True)
    dirs = [p for p in probe.stdout.splitlines() if p and os.path.isdir(p)]
    if not dirs:
        raise RuntimeError(f"{python}: no standard library directory found in sys.path")
    os.makedirs(dest, exist_ok=True)
    _mirror(python, dest)
    for d in dirs:
        _mirror(d, dest)
    objects = [python]
    for d in dirs:
        for base, _sub, files in os.walk(os.path.realpath(d)):
            objects += [os.path.join(base, f) for f in files if f.endswith(".so")]
    out = subprocess.run(["ldd", *objects], capture_output=True, text=True).stdout
    libs: set[str] = set()
    for line in out.splitlines():
        words = line.split()
        if "=>" in words and len(words) > words.index("=>") + 1 and words[words.index("=>") + 1].startswith("/"):
            libs.add(words[words.index("=>") + 1])
        elif words and words[0].startswith("/") and not line.rstrip().endswith(":"):
            libs.add(words[0])  # the dynamic loader, e.g. /lib64/ld-linux-x86-64.so.2
    for lib in sorted(libs):
        _mirror(lib, dest)
    os.makedirs(os.path.join(dest, "tmp"), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)


def _podman_cell_case(ws: Workspace, small: _Kernel, small_setup: Any) -> Case:
    python = _host_python()

    def setup() -> None:
        small_setup()
        ws.ensure_podman()
        rootfs = os.path.join(ws.root, "python-rootfs")
        if not os.path.isdir(rootfs):
            build_python_rootfs(rootfs, python)
            tar_path = os.path.join(ws.root, "python-rootfs.tar")
            with tarfile.open(tar_path, "w") as tar:
                for entry in sorted(os.listdir(rootfs)):
                    tar.add(os.path.join(rootfs, entry), arcname=entry)
            ws.podman("import", "--quiet", tar_path, PYTHON_IMAGE, timeout=300)
            os.unlink(tar_path)
        argv, _fds = ws.launch_argv(
            ws.podman_argv("run", "--rm", *ws.podman_run_flags(), PYTHON_IMAGE, python, "-c", "pass"), "private")
        # The launcher names the private mount namespace by this process's fd;
        # the kernel reaches the same fd through /proc/<our pid>.
        argv = [a.replace("/proc/self/fd/", f"/proc/{os.getpid()}/fd/") for a in argv]
        small.execute(
            "import subprocess as _pcb_sp\n"
            "def _pcb_podman():\n"
            f"    r = _pcb_sp.run({argv!r}, env={ws.podman_env()!r}, cwd={ws.root!r},\n"
            "                    stdin=_pcb_sp.DEVNULL, stdout=_pcb_sp.DEVNULL, stderr=_pcb_sp.PIPE)\n"
            "    if r.returncode:\n"
            "        raise RuntimeError(f'podman exited {r.returncode}: ' + r.stderr.decode(errors='replace')[-400:])\n"
        )

    return Case("podman run --rm python3 -c pass", "cell-podman", run=lambda: small.execute("_pcb_podman()"),
                setup=setup, warmup=2,
                note=f"a cell running `podman run --rm` (crun, private store, --network=none) of {python} -c pass"
                     " in an image of the host's Python")


def _cell_podman_refs(small: _Kernel, small_setup: Any) -> list[Case]:
    return [
        Case("plain cell (pass)", "cell-podman", run=lambda: small.execute("pass"), setup=small_setup,
             teardown=small.stop, warmup=3,
             note="reference: `pass` in the same kernel (no data)"),
        Case("%%container (pass)", "cell-podman", run=lambda: small.execute("%%container\npass"),
             setup=small_setup, warmup=2, note="`pass` under `%%container` in the same kernel"),
    ]


# -- the sampler -------------------------------------------------------------------------------


def _sampler_cases(ws: Workspace) -> list[Case]:
    window = 2.0 if ws.quick else 3.0
    running = RunningContainer(ws)
    setup, teardown = running.setup, running.teardown

    def idle() -> dict[str, float]:
        t0, c0 = time.monotonic(), time.process_time()
        time.sleep(window)
        return {"value": 100.0 * (time.process_time() - c0) / (time.monotonic() - t0)}

    def monitored() -> dict[str, float]:
        before = set(threading.enumerate())
        mon = running.c.monitor(interval=SAMPLER_INTERVAL_S)  # its first sample is taken here, untimed
        try:
            new = [t for t in threading.enumerate() if t not in before and t.name == "pycontain-monitor"]
            if len(new) != 1 or new[0].ident is None:
                raise RuntimeError(f"expected one new pycontain-monitor thread, found {new}")
            clock = time.pthread_getcpuclockid(new[0].ident)
            n0 = len(mon.rows)
            t0, c0, th0 = time.monotonic(), time.process_time(), time.clock_gettime(clock)
            time.sleep(window)
            th1, c1, t1 = time.clock_gettime(clock), time.process_time(), time.monotonic()
            n1 = len(mon.rows)
            if mon.error is not None:
                raise RuntimeError(f"the monitor stopped: {mon.error!r}")
        finally:
            mon.stop()
        wall = t1 - t0
        return {"value": 100.0 * (c1 - c0) / wall, "sampler_thread_percent": 100.0 * (th1 - th0) / wall,
                "samples_per_s": (n1 - n0) / wall}

    return [
        Case("no monitor", "sampler", run=idle, setup=setup, teardown=teardown, unit=SAMPLER_UNIT, warmup=0,
             repeat=10, note=f"reference: the process sleeps {window:g} s beside a running container"),
        Case("pycontain monitor(interval=0.1)", "sampler", run=monitored, setup=setup, unit=SAMPLER_UNIT,
             warmup=0, repeat=10,
             note=f"Container.monitor(interval=0.1) sampling a running busybox container for {window:g} s"),
    ]


def cases(ws: Workspace) -> list[Case]:
    # The same state dir and store as bench_pycontain's cases (idempotent),
    # set before any kernel starts: kernels inherit the environment.
    _pycontain_env(ws)
    out: list[Case] = []
    kernels = _has("jupyter_client") and _has("ipykernel")
    magic = _has("pycontain.notebook.magics")
    why = ("jupyter_client/ipykernel not installed" if not kernels else
           f"{NOT_YET}: pycontain.notebook.magics is missing" if not magic else None)
    names_in = ["plain cell (x = len(df))", "%%container (x = 1, df stays out)", "%%container --in df (x = len(df))"]
    names_snap = ["%%container --snapshot (no data)", "%%container --snapshot (1 GiB in the kernel)",
                  "%%container (1 GiB in the kernel)"]
    if why is None and not (_has("numpy") and _has("pandas")):
        out += [skipped(n, "cell-in", "numpy/pandas not installed") for n in names_in]
    elif why is None:
        out += _cell_in_cases(ws)
    else:
        out += [skipped(n, "cell-in", why) for n in names_in]
    if why is None:
        small, small_setup = _kernel(ws, "")
        out += _cell_snapshot_cases(ws, small, small_setup)
        out += _cell_podman_refs(small, small_setup)
        if "podman" in ws.missing:
            out.append(skipped("podman run --rm python3 -c pass", "cell-podman", ws.missing["podman"]))
        else:
            out.append(_podman_cell_case(ws, small, small_setup))
    else:
        out += [skipped(n, "cell-snapshot", why) for n in names_snap]
        out.append(skipped("podman run --rm python3 -c pass", "cell-podman", why))
    if _has("pycontain.container", "Container"):
        out += _sampler_cases(ws)
    else:
        out.append(skipped("pycontain monitor(interval=0.1)", "sampler", f"{NOT_YET}: pycontain.Container is missing",
                           unit=SAMPLER_UNIT))
    return out
