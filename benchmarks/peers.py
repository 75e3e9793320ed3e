"""The peers' side: install them, build what they run, run them, clean up.

A :class:`Workspace` owns everything one benchmark run makes:

* a busybox rootfs (``/bin/busybox`` from Debian's busybox-static plus one
  symlink per applet) and its tarball;
* one OCI bundle per crun/runc container id (``config.json`` only: its
  ``root.path`` points at the shared, read-only rootfs), with the five
  namespaces pid/net/ipc/uts/mnt and a cgroup under the run's own parent
  ``/pycontain/bench-<pid>`` in every hierarchy;
* a private podman store (graphroot, runroot, tmp dir, containers.conf and
  storage.conf under the workspace: nothing touches the host's podman store),
  with the rootfs imported as ``localhost/pycontain-bench/busybox``;
* the bwrap command line;
* a private mount namespace whose ``/sys/fs/cgroup`` shows the v1
  hierarchies only (``unified`` covered by a tmpfs): crun 1.8 refuses hybrid
  cgroups ("cgroups in hybrid mode not supported, drop all controllers from
  cgroupv2"); there it sees pure v1. crun, and podman (which runs crun), run
  there; those mounts exist in no other namespace. The namespace is kept
  alive by an open fd.

Every command of every peer is started the same way: ``nsenter
--mount=<fd> --wd=<dir> -- argv``, spawned with vfork from Python, where the
fd is the private namespace for crun and podman and the harness's own mount
namespace for everyone else. So the launch cost (~2 ms, measured as the
``launcher`` case) is the same for all, and it does not grow with the
harness's own memory, as a fork of this big Python process would (~10 ms).

``Workspace.close()`` removes all of it: containers (``delete -f``, ``rm -f``),
the podman store, the namespace, the files, and every cgroup directory under
the run's parent; it then checks the cgroup tree and the host paths the peers
like to create (``/run/crun``, ``/run/runc``, ``/run/libpod``,
``/var/lib/containers``) and reports what is left.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# Debian package that provides each peer's command.
PEER_PACKAGES: dict[str, tuple[str, str]] = {
    "crun": ("crun", "crun"),
    "runc": ("runc", "runc"),
    "podman": ("podman", "podman"),
    "bwrap": ("bwrap", "bubblewrap"),
    "busybox": ("busybox", "busybox-static"),
}

IMAGE = "localhost/pycontain-bench/busybox:latest"
CGROUP_ROOT = "/sys/fs/cgroup"
# Host paths crun/runc/podman create on first use even with private state
# dirs (crun's default --root is used by podman's cleanup "exit command";
# containers/image keeps a blob cache in /var/lib/containers/cache).
HOST_PATHS = ("/run/crun", "/run/runc", "/run/libpod", "/var/lib/containers", "/run/containers")
NAMESPACES = ("pid", "network", "ipc", "uts", "mount")
WORK_PARENT = "/var/tmp"



class PeerError(RuntimeError):
    """A peer command failed; the message carries its argv and stderr tail."""


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def ensure_installed(install: bool = True, log: Callable[[str], None] = _log_default) -> dict[str, str]:
    """Install missing peers from Debian; return {peer: reason} for those still missing.

    Needs root and apt-get; with ``install=False`` only reports.
    """
    missing = {p: pkg for p, (cmd, pkg) in PEER_PACKAGES.items() if _which(cmd) is None}
    if missing and install and os.geteuid() == 0 and shutil.which("apt-get"):
        pkgs = sorted(set(missing.values()))
        log(f"installing from Debian: {' '.join(pkgs)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        missing = {p: pkg for p, (cmd, pkg) in PEER_PACKAGES.items() if _which(cmd) is None}
    return {p: f"{PEER_PACKAGES[p][0]} not found (Debian package {pkg})" for p, pkg in missing.items()}


def _which(cmd: str) -> str | None:
    found = shutil.which(cmd)
    if found is None and cmd == "busybox" and os.access("/bin/busybox", os.X_OK):
        return "/bin/busybox"
    return found


def cgroup_mode() -> str:
    """"v2", "hybrid" (v1 controllers + cgroup2 at unified/), "v1" or "none"."""
    types: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            types[left.split()[4]] = right.split()[0]
    root = types.get(CGROUP_ROOT)
    if root == "cgroup2":
        return "v2"
    if any(t == "cgroup" for t in types.values()):
        return "hybrid" if types.get(CGROUP_ROOT + "/unified") == "cgroup2" else "v1"
    return "none"


def hierarchies() -> list[str]:
    """Mounted cgroup hierarchy directories (v1 controllers, unified/, or the v2 root)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            point = left.split()[4]
            if right.split()[0] in ("cgroup", "cgroup2") and point.startswith(CGROUP_ROOT):
                out.append(point)
    return sorted(set(out))


def cgroup_dirs() -> set[str]:
    """Every cgroup directory on the host (to diff before/after a run)."""
    out: set[str] = set()
    for h in hierarchies():
        for dirpath, _dirs, _files in os.walk(h):
            out.add(dirpath)
    return out


def docker_seccomp_for(caps: Sequence[str]) -> dict[str, Any]:
    """pycontain's default seccomp profile (Docker's list) as an OCI
    ``linux.seccomp`` for a process with ``caps``: the Docker-format
    ``includes``/``excludes`` on capabilities resolved, as Docker and podman
    resolve them before handing the profile to runc or crun."""
    from pycontain.backends.seccomp import default_profile_data

    data = default_profile_data()
    have = set(caps)
    rules = []
    for rule in data["syscalls"]:
        needs = set((rule.get("includes") or {}).get("caps") or ())
        unless = set((rule.get("excludes") or {}).get("caps") or ())
        if needs - have or unless & have:
            continue
        out = {"names": list(rule["names"]), "action": rule["action"]}
        if rule.get("args"):
            out["args"] = list(rule["args"])
        if rule.get("errnoRet") is not None:
            out["errnoRet"] = rule["errnoRet"]
        rules.append(out)
    return {"defaultAction": data["defaultAction"], "defaultErrnoRet": data["defaultErrnoRet"],
            "architectures": list(data["architectures"]), "syscalls": rules}


def oci_config(
    rootfs: str, args: Sequence[str], cgroups_path: str, hostname: str = "bench", seccomp: bool = False
) -> dict[str, Any]:
    """An OCI runtime config like ``crun spec``'s, with no terminal and a read-only root
    (``seccomp``: plus Docker's default seccomp profile, as Docker and podman give every container)."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(args),
            "env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": min(1024, nofile), "soft": min(1024, nofile)}],
            "noNewPrivileges": True,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "cgroupsPath": cgroups_path,
            "namespaces": [{"type": t} for t in NAMESPACES],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
            **({"seccomp": docker_seccomp_for(caps)} if seccomp else {}),
        },
    }


def build_rootfs(dest: str, busybox: str) -> None:
    """A minimal busybox rootfs at ``dest``: /bin/busybox + relative applet links."""
    for d in ("bin", "dev", "etc", "proc", "sys", "tmp", "root", "run"):
        os.makedirs(os.path.join(dest, d), exist_ok=True)
    os.chmod(os.path.join(dest, "tmp"), 0o1777)
    shutil.copy2(busybox, os.path.join(dest, "bin", "busybox"))
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for name in applets:
        link = os.path.join(dest, "bin", name)
        if name != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(dest, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(dest, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        if os.path.exists(f"/proc/{p}"):
            out.append(p)
        stack.extend(children.get(p, []))
    return out


def memory_of(pids: Sequence[int]) -> dict[str, float]:
    """Summed Pss and Rss (KiB) of ``pids`` from /proc/PID/smaps_rollup."""
    total = {"pss_kib": 0.0, "rss_kib": 0.0, "processes": 0.0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                text = f.read()
        except OSError:
            continue
        total["processes"] += 1
        for line in text.splitlines():
            key, _, rest = line.partition(":")
            if key == "Pss":
                total["pss_kib"] += float(rest.split()[0])
            elif key == "Rss":
                total["rss_kib"] += float(rest.split()[0])
    return total


@dataclass
class Workspace:
    """Everything one benchmark run makes, and the one place that removes it.

    Bench modules get it in ``cases(ws)``. Useful attributes: ``rootfs``,
    ``cgroup_parent`` ("/pycontain/bench-<pid>", relative to each hierarchy
    root), ``quick``, ``missing`` ({peer: reason}); methods ``run()``,
    ``crun()``, ``runc()``, ``podman()``, ``bwrap_argv()``, ``bundle()``,
    ``spawn()``, ``on_close()``.
    """

    quick: bool = False
    missing: dict[str, str] = field(default_factory=dict)
    log: Callable[[str], None] = _log_default
    root: str = ""
    rootfs: str = ""
    tarball: str = ""
    cgroup_parent: str = ""
    mode: str = ""
    _ns_fd: int | None = None
    _host_fd: int | None = None
    _started: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _host_before: dict[str, bool] = field(default_factory=dict)
    _pycontain_before: set[str] = field(default_factory=set)
    _tops_before: set[str] = field(default_factory=set)
    _podman_ready: bool = False
    leftovers: dict[str, list[str]] = field(default_factory=dict)

    # -- life cycle ---------------------------------------------------------

    def open(self) -> Workspace:
        """Make the rootfs, the private mount namespace and the state dirs."""
        self._host_before = {p: os.path.lexists(p) for p in HOST_PATHS}
        self._tops_before = set(self._cgroup_tops())
        self._pycontain_before = {t for t in self._tops_before if os.path.isdir(os.path.join(t, "pycontain"))}
        self.mode = cgroup_mode()
        self.cgroup_parent = f"/pycontain/bench-{os.getpid()}"
        # /var/tmp is on the root fs here (overlay-capable); the workspace holds
        # the podman store, which overlay cannot stack on tmpfs or overlay.
        # The pid in the name lets a later run clean up after one that was killed.
        self.root = tempfile.mkdtemp(prefix=f"pycontain-bench-{os.getpid()}-", dir=WORK_PARENT)
        for d in ("state/crun", "state/runc", "bundles", "tmp", "podman/tmp"):
            os.makedirs(os.path.join(self.root, d), exist_ok=True)
        busybox = _which("busybox")
        if busybox is None:
            raise PeerError("busybox-static is needed for the benchmark rootfs")
        self.rootfs = os.path.join(self.root, "rootfs")
        build_rootfs(self.rootfs, busybox)
        self.tarball = os.path.join(self.root, "rootfs.tar")
        with tarfile.open(self.tarball, "w") as tar:
            for entry in sorted(os.listdir(self.rootfs)):
                tar.add(os.path.join(self.rootfs, entry), arcname=entry)
        self._host_fd = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._open_namespace()
        return self

    def __enter__(self) -> Workspace:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def on_close(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at close(), before the workspace itself is removed (LIFO)."""
        self._closers.append(fn)

    def _view_script(self) -> str:
        """Shell commands that build the private /sys/fs/cgroup view (v1 and hybrid hosts).

        A fresh tmpfs, with each mounted v1 hierarchy bind-mounted back in and,
        on a hybrid host, a tmpfs where ``unified`` was, is moved over
        /sys/fs/cgroup. crun then sees pure v1 (it refuses hybrid), and the
        directories and files crun makes for controllers listed in
        /proc/self/cgroup but mounted nowhere (e.g. net_cls after another
        program unmounted it) land in that private tmpfs, not in the host's
        /sys/fs/cgroup. It all vanishes with the namespace.
        """
        if self.mode not in ("v1", "hybrid"):
            return ""
        stage = os.path.join(self.root, "cgroup-view")
        os.makedirs(stage, exist_ok=True)
        q = shlex.quote
        cmds = [f"mount -t tmpfs -o size=16m,mode=0755 pycontain-bench-cgview {q(stage)}"]
        for h in hierarchies():
            name = os.path.relpath(h, CGROUP_ROOT)
            if name.startswith("..") or name == ".":
                continue
            target = os.path.join(stage, name)
            cmds.append(f"mkdir -p {q(target)}")
            if self.mode == "hybrid" and name == "unified":
                cmds.append(f"mount -t tmpfs -o size=16m,mode=0755 pycontain-bench-nocg2 {q(target)}")
            else:
                cmds.append(f"mount --bind {q(h)} {q(target)}")
        for entry in sorted(os.listdir(CGROUP_ROOT)):
            path = os.path.join(CGROUP_ROOT, entry)
            if os.path.islink(path):  # e.g. cpu -> cpu,cpuacct
                cmds.append(f"ln -s {q(os.readlink(path))} {q(os.path.join(stage, entry))}")
        cmds.append(f"mount --move {q(stage)} {CGROUP_ROOT}")
        return " && ".join(cmds) + " && "

    def _open_namespace(self) -> None:
        # A private mount namespace for crun and podman, with the private
        # /sys/fs/cgroup view of _view_script(). The shell prints once the
        # mounts are done; the fd we open keeps the namespace alive after the
        # holder process is gone.
        script = self._view_script() + "echo ready && exec sleep 600"
        holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )
        try:
            assert holder.stdout is not None
            line = holder.stdout.readline()
            if line.strip() != b"ready":
                raise PeerError("could not make the private mount namespace for crun (unshare/mount failed)")
            self._ns_fd = os.open(f"/proc/{holder.pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()

    def close(self) -> None:
        """Remove every container, state dir, cgroup and file this run made."""
        for fn in reversed(self._closers):
            with _suppress_and_log(self.log, "closer"):
                fn()
        self._closers.clear()
        if self._podman_ready:
            with _suppress_and_log(self.log, "podman rm"):
                self.podman("rm", "--all", "--force", "--time", "0", check=False)
            # conmon and podman's "container cleanup" exit commands outlive the
            # podman commands that started them; they name our store in argv.
            self._reap_strays(os.path.join(self.podman_dir, "store"))
        for runtime in ("crun", "runc"):
            state = os.path.join(self.root, "state", runtime)
            if not self.root or runtime in self.missing or not os.path.isdir(state):
                continue
            for cid in os.listdir(state):
                with _suppress_and_log(self.log, f"{runtime} delete {cid}"):
                    self._runtime(runtime, "delete", "--force", cid, check=False)
        for p in self._started:
            if p.poll() is None:
                for pid in reversed(descendants(p.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        self._started.clear()
        for fd in (self._ns_fd, self._host_fd):
            if fd is not None:
                os.close(fd)
        self._ns_fd = self._host_fd = None
        if self.root:
            _rmtree(self.root, self.log)
        self._remove_cgroups()
        self._remove_host_paths()
        self.leftovers = self.check_leftovers()

    def _reap_strays(self, marker: str, seconds: float = 10.0) -> None:
        """Wait for processes whose argv mentions ``marker`` (ours), then kill them."""
        deadline = time.monotonic() + seconds
        while True:
            strays = _pids_mentioning(marker)
            if not strays:
                return
            if time.monotonic() > deadline:
                self.log(f"  ! killing leftover peer processes {strays}")
                for pid in strays:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
                return
            time.sleep(0.05)

    def _cgroup_tops(self) -> list[str]:
        """Every directory directly under /sys/fs/cgroup (mounted or not)."""
        try:
            entries = os.listdir(CGROUP_ROOT)
        except OSError:
            return []
        return sorted(
            os.path.join(CGROUP_ROOT, e)
            for e in entries
            if not os.path.islink(os.path.join(CGROUP_ROOT, e)) and os.path.isdir(os.path.join(CGROUP_ROOT, e))
        )

    def _remove_cgroups(self) -> None:
        if not self.cgroup_parent:
            return
        rel = self.cgroup_parent.lstrip("/")
        mounted = set(hierarchies())
        for top in self._cgroup_tops():
            ours = os.path.join(top, rel)
            if not os.path.isdir(ours):
                continue
            if top in mounted:
                dirs = [d for d, _s, _f in os.walk(ours)]
                # Anything still inside is a container process a failed delete
                # left running: ours, so it goes before its cgroup does.
                for d in dirs:
                    with contextlib.suppress(OSError, ValueError):
                        with open(os.path.join(d, "cgroup.procs")) as f:
                            for pid in f.read().split():
                                with contextlib.suppress(ProcessLookupError):
                                    os.kill(int(pid), signal.SIGKILL)
                for d in sorted(dirs, key=len, reverse=True):
                    _rmdir_retry(d)
            else:
                # A plain directory on the host's /sys/fs/cgroup tmpfs: a
                # runtime's `mkdir -p` for a controller that is listed in
                # /proc/self/cgroup but mounted nowhere. Ours by name.
                shutil.rmtree(ours, ignore_errors=True)
        # The shared parent, and top-level dirs a runtime made: only where this
        # run created them; rmdir refuses if someone else put something there.
        for top in self._cgroup_tops():
            if top not in self._pycontain_before:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(top, "pycontain"))
            if top not in self._tops_before and top not in mounted:
                with contextlib.suppress(OSError):
                    os.rmdir(top)

    def _remove_host_paths(self) -> None:
        for path, existed in self._host_before.items():
            if existed or not os.path.isdir(path):
                continue
            # Only the empty dirs and the blob-info cache the peers make on
            # first use; anything else is not ours and stays (and is reported).
            for dirpath, _dirs, files in os.walk(path, topdown=False):
                for name in files:
                    if name.startswith(("blob-info-cache", "alive", "events.log")):
                        with contextlib.suppress(OSError):
                            os.unlink(os.path.join(dirpath, name))
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)

    def check_leftovers(self) -> dict[str, list[str]]:
        """What this run left on the host (should be nothing)."""
        rel = self.cgroup_parent.lstrip("/")
        cgroups = sorted(
            os.path.join(t, rel) for t in self._cgroup_tops() if rel and os.path.exists(os.path.join(t, rel))
        )
        mounted = set(hierarchies())
        cgroups += [t for t in self._cgroup_tops() if t not in self._tops_before and t not in mounted]
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if self.root and self.root in line or "pycontain-bench-nocg2" in line:
                    mounts.append(line.split()[4])
        host = [p for p, existed in self._host_before.items() if not existed and os.path.lexists(p)]
        files = [self.root] if self.root and os.path.exists(self.root) else []
        return {"cgroups": cgroups, "mounts": mounts, "host_paths": host, "files": files}

    # -- running commands ---------------------------------------------------

    def launch_argv(self, argv: Sequence[str], view: str = "host") -> tuple[list[str], tuple[int, ...]]:
        """``argv`` wrapped in the common launcher, and the fds to pass to it.

        ``view="private"``: the private mount namespace (crun, podman);
        ``"host"``: this process's own. Every peer pays the same launcher.
        """
        fd = self._ns_fd if view == "private" else self._host_fd
        if fd is None:
            raise PeerError("the workspace is not open")
        cwd = self.root or "/"
        return ["nsenter", f"--mount=/proc/self/fd/{fd}", f"--wd={cwd}", "--", *argv], (fd,)

    def run(
        self,
        argv: Sequence[str],
        *,
        view: str = "host",
        check: bool = True,
        timeout: float = 120,
        capture: bool = False,
        env: dict[str, str] | None = None,
        detached: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` to completion, in the host's or the private mount namespace.

        ``detached``: the command leaves a process behind that inherits its
        stdio (``run -d``), so stdout/stderr go to a file, never to a pipe we
        would wait on. Raises PeerError (with stderr) when ``check`` and it fails.
        """
        cwd = self.root or "/"
        errfile = None
        if detached:
            errfile = open(os.path.join(self.root, "tmp", "detached.err"), "w+b")
        full, fds = self.launch_argv(argv, view)
        try:
            proc = subprocess.run(
                full,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if capture and not detached else subprocess.DEVNULL,
                stderr=errfile if errfile is not None else subprocess.PIPE,
                pass_fds=fds,
                cwd=cwd,
                timeout=timeout,
                env=env,
            )
            if errfile is not None:
                errfile.seek(0)
                proc.stderr = errfile.read()
        finally:
            if errfile is not None:
                errfile.close()
        if check and proc.returncode != 0:
            tail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-5:]
            raise PeerError(f"{' '.join(argv)} -> exit {proc.returncode}: {' | '.join(tail)}")
        return proc

    def spawn(self, argv: Sequence[str], *, view: str = "host") -> subprocess.Popen[bytes]:
        """Start ``argv`` in the background; close() kills it and its descendants."""
        full, fds = self.launch_argv(argv, view)
        p = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=fds,
            cwd=self.root or "/",
        )
        self._started.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        """Kill a process started by spawn() and everything under it."""
        for pid in reversed(descendants(p.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait(timeout=10)
        with contextlib.suppress(ValueError):
            self._started.remove(p)

    # -- crun / runc ----------------------------------------------------------

    def bundle(self, runtime: str, cid: str, args: Sequence[str], seccomp: bool = False) -> str:
        """An OCI bundle dir for container ``cid``: its config.json only.

        The cgroup is ``<cgroup_parent>/<cid>`` in every hierarchy.
        """
        path = os.path.join(self.root, "bundles", cid)
        os.makedirs(path, exist_ok=True)
        config = oci_config(self.rootfs, args, f"{self.cgroup_parent}/{cid}", seccomp=seccomp)
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        return path

    def _runtime(self, runtime: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        view = "private" if runtime == "crun" else "host"
        state = os.path.join(self.root, "state", runtime)
        return self.run([runtime, "--root", state, *args], view=view, **kw)

    def runtime_argv(self, runtime: str, *args: str) -> list[str]:
        return [runtime, "--root", os.path.join(self.root, "state", runtime), *args]

    def runtime_view(self, runtime: str) -> str:
        """crun runs in the private namespace (pure v1 view); runc on the host."""
        return "private" if runtime == "crun" else "host"

    def crun(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self._runtime("crun", *args, **kw)

    def runc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        return self._runtime("runc", *args, **kw)

    def container_pid(self, runtime: str, cid: str) -> int:
        out = self._runtime(runtime, "state", cid, capture=True).stdout
        return int(json.loads(out)["pid"])

    # -- podman ---------------------------------------------------------------

    @property
    def podman_dir(self) -> str:
        return os.path.join(self.root, "podman")

    def podman_env(self) -> dict[str, str]:
        d = self.podman_dir
        return dict(
            os.environ,
            CONTAINERS_CONF=os.path.join(d, "containers.conf"),
            CONTAINERS_STORAGE_CONF=os.path.join(d, "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=os.path.join(d, "registries.conf"),
            TMPDIR=os.path.join(self.root, "tmp"),
        )

    def podman_argv(self, *args: str) -> list[str]:
        # No --runtime-flag root=...: podman's cleanup ("exit command") does not
        # pass it on, so its `crun delete` would miss the container and leave
        # the libpod-<id> cgroups behind. crun keeps its state in /run/crun.
        return ["podman", *args]

    def podman_run_flags(self, cgroup: str = "podman") -> list[str]:
        # This sandbox has no CAP_SYS_RESOURCE: podman's default nofile/nproc
        # limits (1048576) cannot be set; pass small ones (nofile as in the
        # OCI bundles of crun/runc).
        nofile = min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
        return [
            "--network=none",
            "--pull=never",
            "--ulimit",
            f"nofile={nofile}:{nofile}",
            "--ulimit",
            f"nproc={nproc}:{nproc}",
            f"--cgroup-parent={self.cgroup_parent}/{cgroup}",
        ]

    def podman(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
        kw.setdefault("env", self.podman_env())
        return self.run(self.podman_argv(*args), view="private", **kw)

    def ensure_podman(self) -> None:
        """Write the private podman config and import the rootfs as IMAGE (once)."""
        if self._podman_ready:
            return
        d = self.podman_dir
        for sub in ("store", "run", "tmp", "cni"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "containers.conf"), "w") as f:
            f.write(
                "[engine]\n"
                f'tmp_dir = "{d}/tmp"\n'
                'events_logger = "file"\n'
                f'events_logfile_path = "{d}/tmp/events.log"\n'
                'cgroup_manager = "cgroupfs"\n'
                f'volume_path = "{d}/store/volumes"\n'
                'runtime = "crun"\n'
                "[network]\n"
                f'network_config_dir = "{d}/cni"\n'
            )
        with open(os.path.join(d, "storage.conf"), "w") as f:
            f.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{d}/store"\nrunroot = "{d}/run"\n')
        with open(os.path.join(d, "registries.conf"), "w") as f:
            f.write("unqualified-search-registries = []\n")
        self._podman_ready = True
        self.podman("import", "--quiet", "--change", "CMD=/bin/sh", self.tarball, IMAGE, timeout=120)

    # -- bubblewrap -------------------------------------------------------------

    def bwrap_argv(self, *cmd: str) -> list[str]:
        return [
            "bwrap", "--unshare-all", "--ro-bind", self.rootfs, "/", "--proc", "/proc", "--dev", "/dev",
            "--hostname", "bench", *cmd,
        ]


class _suppress_and_log(contextlib.AbstractContextManager[None]):
    def __init__(self, log: Callable[[str], None], what: str) -> None:
        self.log, self.what = log, what

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc is not None and isinstance(exc, Exception):
            self.log(f"  ! cleanup ({self.what}): {exc!r}")
            return True
        return False


def _pids_mentioning(marker: str) -> list[int]:
    me = os.getpid()
    out = []
    needle = marker.encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if needle in f.read():
                    out.append(int(name))
        except OSError:
            continue
    return out


def _rmdir_retry(path: str, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            # EBUSY while the last task of the cgroup is still exiting.
            if exc.errno not in (errno.EBUSY, errno.ENOTEMPTY) or time.monotonic() > deadline:
                return
            time.sleep(0.05)


def _rmtree(path: str, log: Callable[[str], None]) -> None:
    def onerror(fn: Any, p: str, exc: Any) -> None:
        log(f"  ! could not remove {p}: {exc[1]!r}")

    shutil.rmtree(path, onerror=onerror)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] not in ("Z", "X")


def reap_stale(log: Callable[[str], None] = _log_default) -> list[str]:
    """Remove what earlier runs left when they were killed (SIGKILL, a crash).

    A run is stale when the pid in its workspace name or cgroup parent
    (``pycontain-bench-<pid>-*``, ``/pycontain/bench-<pid>``) is gone: its
    container processes (found in its cgroups, and by its store path for
    conmon) are killed, its cgroups removed, its workspace deleted. Returns
    what was removed.
    """
    removed: list[str] = []
    stale: set[int] = set()
    for name in os.listdir(WORK_PARENT):
        parts = name.split("-")
        if name.startswith("pycontain-bench-") and len(parts) >= 4 and parts[2].isdigit():
            if not _alive(int(parts[2])):
                stale.add(int(parts[2]))
    for top in glob.glob(os.path.join(CGROUP_ROOT, "*", "pycontain", "bench-*")):
        tail = os.path.basename(top)[len("bench-"):]
        if tail.isdigit() and not _alive(int(tail)):
            stale.add(int(tail))
    for pid in sorted(stale):
        victims: set[int] = set()
        for procs in glob.glob(os.path.join(CGROUP_ROOT, "*", "pycontain", f"bench-{pid}", "**", "cgroup.procs"),
                               recursive=True):
            with contextlib.suppress(OSError, ValueError):
                with open(procs) as f:
                    victims.update(int(x) for x in f.read().split())
        for work in glob.glob(os.path.join(WORK_PARENT, f"pycontain-bench-{pid}-*")):
            victims.update(_pids_mentioning(work))
        for v in sorted(victims):
            with contextlib.suppress(ProcessLookupError):
                os.kill(v, signal.SIGKILL)
        if victims:
            time.sleep(0.2)
        for work in glob.glob(os.path.join(WORK_PARENT, f"pycontain-bench-{pid}-*")):
            # podman's crun keeps state in /run/crun/<id>; its "status" names
            # the bundle, which lives in the workspace.
            for status in glob.glob("/run/crun/*/status"):
                with contextlib.suppress(OSError, ValueError):
                    with open(status) as f:
                        if json.load(f).get("bundle", "").startswith(work + "/"):
                            shutil.rmtree(os.path.dirname(status), ignore_errors=True)
            _rmtree(work, log)
            removed.append(work)
        for top in glob.glob(os.path.join(CGROUP_ROOT, "*", "pycontain", f"bench-{pid}")):
            if os.path.ismount(os.path.dirname(os.path.dirname(top))):  # a real hierarchy
                for d in sorted((d for d, _s, _f in os.walk(top)), key=len, reverse=True):
                    _rmdir_retry(d)
            else:
                shutil.rmtree(top, ignore_errors=True)
            removed.append(top)
        log(f"  removed what the killed run {pid} left: {len(victims)} processes, {removed}")
    return removed


@contextlib.contextmanager
def workspace(**kw: Any) -> Iterator[Workspace]:
    ws = Workspace(**kw)
    try:
        yield ws.open()
    finally:
        ws.close()
