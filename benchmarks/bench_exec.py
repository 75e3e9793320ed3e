"""Exec into a running container, and the cost of one stats sample.

Group ``exec``: ``<runtime> exec <id> /bin/true`` into a container that runs
``sleep``. Group ``stats``: one sample of the container's resource usage as
each peer offers it (``runc events --stats``, ``podman stats --no-stream``;
crun 1.8 has no stats command), beside the floor: Python reading the three
v1 cgroup files a sample needs (memory.usage_in_bytes, cpuacct.usage,
pids.current) of the same container.
"""

from __future__ import annotations

import os

from benchmarks.measure import Case, skipped
from benchmarks.peers import CGROUP_ROOT, IMAGE, Workspace

SLEEP = ["/bin/sleep", "100000"]


class _Sleeper:
    """A detached container running sleep, for one peer."""

    def __init__(self, ws: Workspace, peer: str, cid: str) -> None:
        self.ws, self.peer, self.cid = ws, peer, cid

    def start(self) -> None:
        ws = self.ws
        if self.peer == "podman":
            ws.ensure_podman()
            ws.podman("run", "-d", "--name", self.cid, *ws.podman_run_flags(), IMAGE, *SLEEP, detached=True)
        else:
            bundle = ws.bundle(self.peer, self.cid, SLEEP)
            ws.run(ws.runtime_argv(self.peer, "run", "--detach", "--bundle", bundle, self.cid),
                   view=ws.runtime_view(self.peer), detached=True)

    def stop(self) -> None:
        ws = self.ws
        if self.peer == "podman":
            ws.podman("rm", "--force", "--time", "0", self.cid, check=False)
        else:
            ws.run(ws.runtime_argv(self.peer, "delete", "--force", self.cid),
                   view=ws.runtime_view(self.peer), check=False)

    def exec_argv(self, *cmd: str) -> list[str]:
        if self.peer == "podman":
            return self.ws.podman_argv("exec", self.cid, *cmd)
        return self.ws.runtime_argv(self.peer, "exec", self.cid, *cmd)

    def view(self) -> str:
        return "private" if self.peer == "podman" else self.ws.runtime_view(self.peer)


def _exec_case(ws: Workspace, peer: str) -> Case:
    s = _Sleeper(ws, peer, f"pcb-{peer}-exec")
    argv: list[str] = []
    env: dict[str, str] | None = ws.podman_env() if peer == "podman" else None

    def setup() -> None:
        s.start()
        argv[:] = s.exec_argv("/bin/true")

    def run() -> None:
        ws.run(argv, view=s.view(), env=env)

    return Case(
        peer,
        "exec",
        run=run,
        setup=setup,
        teardown=s.stop,
        note=f"{peer} exec <id> /bin/true into a container running sleep",
    )


def _stats_cases(ws: Workspace) -> list[Case]:
    out: list[Case] = []
    if "runc" in ws.missing:
        out.append(skipped("runc", "stats", ws.missing["runc"]))
        out.append(skipped("python: 3 cgroup files", "stats", ws.missing["runc"]))
    else:
        s = _Sleeper(ws, "runc", "pcb-runc-stats")
        files: list[str] = []

        def setup() -> None:
            s.start()
            files[:] = [
                os.path.join(CGROUP_ROOT, ctrl, ws.cgroup_parent.lstrip("/"), s.cid, name)
                for ctrl, name in (("memory", "memory.usage_in_bytes"), ("cpuacct", "cpuacct.usage"),
                                   ("pids", "pids.current"))
            ]

        argv = ws.runtime_argv("runc", "events", "--stats", s.cid)

        def runc_events() -> None:
            ws.run(argv)

        out.append(Case("runc", "stats", run=runc_events, setup=setup, teardown=s.stop,
                        note="runc events --stats <id> (one JSON sample)"))

        def read_files() -> None:
            for path in files:
                with open(path, "rb") as f:
                    f.read()

        if ws.mode in ("v1", "hybrid"):
            out.append(Case("python: 3 cgroup files", "stats", run=read_files, warmup=3,
                            note="floor: open+read memory.usage_in_bytes, cpuacct.usage, pids.current (v1)"))
        else:
            out.append(skipped("python: 3 cgroup files", "stats", "reads v1 files; this host is not v1"))
    if "podman" in ws.missing:
        out.append(skipped("podman", "stats", ws.missing["podman"]))
    else:
        p = _Sleeper(ws, "podman", "pcb-podman-stats")
        env = ws.podman_env()
        pargv = ws.podman_argv("stats", "--no-stream", "--format", "json", p.cid)

        def podman_stats() -> None:
            ws.run(pargv, view="private", env=env)

        out.append(Case("podman", "stats", run=podman_stats,
                        setup=p.start, teardown=p.stop, note="podman stats --no-stream <id>"))
    out.append(skipped("crun", "stats", "crun has no stats command (1.8: no `events`)"))
    return out


def cases(ws: Workspace) -> list[Case]:
    out: list[Case] = []
    for peer in ("crun", "runc", "podman"):
        if peer in ws.missing:
            out.append(skipped(peer, "exec", ws.missing[peer]))
        else:
            out.append(_exec_case(ws, peer))
    out.extend(_stats_cases(ws))
    return out
