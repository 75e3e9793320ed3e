"""Start-to-exit of /bin/true in the busybox rootfs, warm and after an idle gap.

Groups ``start-warm`` (back to back) and ``start-idle`` (0.3 s of idle before
each repetition, untimed: caches and CPU frequency cool down a little, as
between two cells of a notebook). Python's own start-up is measured beside
them as a reference: a container engine written in Python pays it (or not,
with a zygote).
"""

from __future__ import annotations

import shutil
import sys
import time

from benchmarks.measure import Case, skipped
from benchmarks.peers import IMAGE, Workspace

IDLE_GAP_S = 0.3
GROUPS = ("start-warm", "start-idle")


def _gap() -> None:
    time.sleep(IDLE_GAP_S)


def _runtime_case(ws: Workspace, runtime: str, group: str, seccomp: bool = False) -> Case:
    cid = f"pcb-{runtime}{'-seccomp' if seccomp else ''}-{group}"
    argv: list[str] = []

    def setup() -> None:
        bundle = ws.bundle(runtime, cid, ["/bin/true"], seccomp=seccomp)
        argv[:] = ws.runtime_argv(runtime, "run", "--bundle", bundle, cid)

    def run() -> None:
        # `run` in the foreground creates, starts, waits and deletes (state dir
        # and cgroup); a fresh cgroup is made every time, as for a new container.
        ws.run(argv, view=ws.runtime_view(runtime))

    def teardown() -> None:
        ws.run(ws.runtime_argv(runtime, "delete", "--force", cid), view=ws.runtime_view(runtime), check=False)

    return Case(
        f"{runtime} + seccomp" if seccomp else runtime,
        group,
        run=run,
        setup=setup,
        teardown=teardown,
        before=_gap if group == "start-idle" else None,
        note=f"{runtime} run (5 namespaces, cgroup, read-only busybox root)"
        + (", with Docker's default seccomp profile (pycontain's, resolved for its caps), as Docker and podman"
           " run every container" if seccomp else ", no seccomp filter (as `crun spec` makes it)"),
    )


def _podman_case(ws: Workspace, group: str) -> Case:
    argv: list[str] = []
    env: dict[str, str] = {}

    def setup() -> None:
        ws.ensure_podman()
        argv[:] = ws.podman_argv("run", "--rm", *ws.podman_run_flags(), IMAGE, "/bin/true")
        env.update(ws.podman_env())

    def run() -> None:
        ws.run(argv, view="private", env=env)

    return Case(
        "podman",
        group,
        run=run,
        setup=setup,
        before=_gap if group == "start-idle" else None,
        note="podman run --rm --network=none (crun, cgroupfs, file events, private store)",
    )


def _simple(name: str, group: str, argv: list[str], note: str, view: str, ws: Workspace) -> Case:
    def run() -> None:
        ws.run(argv, view=view)

    return Case(name, group, run=run, before=_gap if group == "start-idle" else None, note=note)


def cases(ws: Workspace) -> list[Case]:
    out: list[Case] = []
    for group in GROUPS:
        for runtime in ("crun", "runc"):
            if runtime in ws.missing:
                out.append(skipped(runtime, group, ws.missing[runtime]))
            else:
                out.append(_runtime_case(ws, runtime, group))
                if runtime == "crun":
                    # pycontain loads Docker's default filter in every container
                    # (~0.9 ms of the kernel's here): the same work for crun.
                    out.append(_runtime_case(ws, runtime, group, seccomp=True))
        if "podman" in ws.missing:
            out.append(skipped("podman", group, ws.missing["podman"]))
        else:
            out.append(_podman_case(ws, group))
        if "bwrap" in ws.missing:
            out.append(skipped("bwrap", group, ws.missing["bwrap"]))
        else:
            out.append(
                _simple(
                    "bwrap",
                    group,
                    ws.bwrap_argv("/bin/true"),
                    "bwrap --unshare-all --ro-bind rootfs / --proc /proc --dev /dev (no cgroup)",
                    "host",
                    ws,
                )
            )
        out.append(_simple("launcher: /bin/true", group, ["/bin/true"],
                           "reference: the launcher every command pays (vfork + nsenter + exec), host's /bin/true",
                           "host", ws))
        python = sys.executable
        out.append(_simple("python3 -I -S -c pass", group, [python, "-I", "-S", "-c", "pass"], "reference: interpreter floor", "host", ws))
        out.append(_simple("python3 -c pass", group, [python, "-c", "pass"], "reference: interpreter with site", "host", ws))
        # Tried by hand on this host (systemd is not PID 1 here): 0.34-0.73 s per
        # /bin/true, it splits its cgroup into payload/ + supervisor/ (in the
        # caller's own cgroup unless moved first) and leaves /run/systemd/nspawn
        # behind; not quick, and not clean, so it is listed, not run.
        nspawn = shutil.which("systemd-nspawn")
        out.append(skipped(
            "systemd-nspawn",
            group,
            "not run: 0.3-0.7 s here without systemd as PID 1; makes payload/supervisor cgroups"
            " in its caller's cgroup and leaves /run/systemd/nspawn"
            if nspawn
            else "systemd-nspawn not installed",
        ))
    return out

