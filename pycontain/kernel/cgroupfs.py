"""Where the cgroup filesystems are, and which mode the host runs.

Detection follows DESIGN.md §4: cgroup2 mounted at the root of the cgroup
tree is "v2"; v1 hierarchies (possibly with a cgroup2 at ``unified/``, as
systemd's hybrid mode does) are "hybrid" when a cgroup2 mount exists and
"v1" otherwise. Hybrid hosts are served by the v1 backend: the cgroup2
mount there has no useful controllers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pycontain.kernel.proc import MountInfo, mountinfo

CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class KernelController:
    """One row of /proc/cgroups: a controller the kernel was built with."""

    name: str
    hierarchy: int  # 0: not bound to a v1 hierarchy (free for v2, or unused)
    num_cgroups: int
    enabled: bool


@dataclass(frozen=True)
class CgroupLayout:
    """The host's cgroup mounts as this process sees them."""

    mode: str  # "v1", "v2", "hybrid" or "none"
    #: v1 controller -> mount point (co-mounted controllers share one)
    v1_mounts: dict[str, str] = field(default_factory=dict)
    #: where cgroup2 is mounted, if anywhere
    v2_mount: str | None = None
    #: every controller the kernel knows, from /proc/cgroups
    kernel_controllers: dict[str, KernelController] = field(default_factory=dict)

    def v2_controllers(self) -> list[str]:
        """Controllers usable on the cgroup2 mount (its cgroup.controllers)."""
        if not self.v2_mount:
            return []
        try:
            with open(f"{self.v2_mount}/cgroup.controllers") as f:
                return f.read().split()
        except OSError:
            return []


_V1_NON_CONTROLLER_OPTIONS = frozenset(
    {"rw", "ro", "relatime", "noatime", "nosuid", "nodev", "noexec", "clone_children",
     "xattr", "noprefix", "cpuset_v2_mode", "favordynmods", "all", "none"}
)


def parse_proc_cgroups(text: str) -> dict[str, KernelController]:
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, hier, num, enabled = line.split()[:4]
        out[name] = KernelController(name, int(hier), int(num), enabled == "1")
    return out


def layout_from(mounts: list[MountInfo], proc_cgroups: str) -> CgroupLayout:
    """Pure part of :func:`layout`, testable on recorded mountinfo text."""
    known = parse_proc_cgroups(proc_cgroups)
    v1: dict[str, str] = {}
    v2_mount = None
    for m in mounts:
        if m.fstype == "cgroup2":
            # Prefer the mount at the root of the tree when there are several.
            if v2_mount is None or m.mount_point == CGROUP_ROOT:
                v2_mount = m.mount_point
        elif m.fstype == "cgroup":
            for opt in m.super_options:
                if opt.startswith("name="):
                    v1.setdefault(opt, m.mount_point)
                elif opt in known or (not known and opt not in _V1_NON_CONTROLLER_OPTIONS):
                    # Options like clone_children or xattr are not controllers.
                    v1.setdefault(opt, m.mount_point)
    real_v1 = {k: v for k, v in v1.items() if not k.startswith("name=")}
    if v2_mount == CGROUP_ROOT and not real_v1:
        mode = "v2"
    elif real_v1:
        mode = "hybrid" if v2_mount else "v1"
    elif v2_mount:
        mode = "v2"
    else:
        mode = "none"
    return CgroupLayout(mode, v1, v2_mount, known)


def layout() -> CgroupLayout:
    """Read this process's view of the cgroup mounts."""
    try:
        with open("/proc/cgroups") as f:
            text = f.read()
    except OSError:
        text = ""
    return layout_from(mountinfo(), text)
