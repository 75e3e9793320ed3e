"""Image build, cold and cached: ``podman build`` of a 3-step Containerfile.

    FROM localhost/pycontain-bench/busybox:latest   (the imported busybox rootfs)
    RUN echo built > /built.txt
    COPY payload.txt /payload.txt

Group ``build-cold`` builds with ``--no-cache`` (every step runs), group
``build-cached`` rebuilds the unchanged file (every step is a cache hit).
"""

from __future__ import annotations

import os

from benchmarks.measure import Case, skipped
from benchmarks.peers import IMAGE, Workspace

CONTAINERFILE = f"FROM {IMAGE}\nRUN echo built > /built.txt\nCOPY payload.txt /payload.txt\n"
MAX_REPEAT = 10  # a cold build takes ~1 s; ten pairs are plenty for a median


def write_context(ws: Workspace) -> str:
    """The build context dir (Containerfile + one file to COPY); returns its path."""
    ctx = os.path.join(ws.root, "build-context")
    os.makedirs(ctx, exist_ok=True)
    with open(os.path.join(ctx, "Containerfile"), "w") as f:
        f.write(CONTAINERFILE)
    with open(os.path.join(ctx, "payload.txt"), "w") as f:
        f.write("payload\n" * 64)
    return ctx


def _podman_build(ws: Workspace, cold: bool) -> Case:
    argv: list[str] = []
    env: dict[str, str] = {}

    def setup() -> None:
        ws.ensure_podman()
        ctx = write_context(ws)
        # buildah uses --cgroup-parent as the build container's own cgroup, so it
        # gets a leaf of its own (a v1 devices cgroup with children rejects the
        # "deny all" rule: EINVAL).
        flags = ws.podman_run_flags(cgroup="build-cold" if cold else "build-cached")
        argv[:] = ws.podman_argv(
            "build", "--quiet", *(["--no-cache"] if cold else []), *flags,
            "--tag", "localhost/pycontain-bench/built:latest", ctx,
        )
        env.update(ws.podman_env())

    def run() -> None:
        ws.run(argv, view="private", env=env, timeout=300)

    return Case(
        "podman",
        "build-cold" if cold else "build-cached",
        run=run,
        setup=setup,
        repeat=MAX_REPEAT,
        note="podman build " + ("--no-cache (3 steps run)" if cold else "(3 steps cached)"),
    )


def cases(ws: Workspace) -> list[Case]:
    if "podman" in ws.missing:
        return [skipped("podman", g, ws.missing["podman"]) for g in ("build-cold", "build-cached")]
    return [_podman_build(ws, cold=True), _podman_build(ws, cold=False)]
