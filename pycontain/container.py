"""Containers: namespaces, a cgroup and a copy-on-write root, with Docker's
isolation defaults.

::

    import pycontain
    r = pycontain.run(["echo", "hi"], memory="64M")      # one shot
    r.returncode, r.stdout

    with pycontain.Container(command=["sleep", "30"], cpus=0.5) as c:
        c.exec(["ps"])                                  # a second process inside
        c.call(sum, [1, 2, 3])                          # Python inside, result back

How a container comes to be (DESIGN.md §3): a single-threaded child of the
caller joins the container's cgroup, unshares the pid, mnt, uts, ipc and
net namespaces (the net namespace is made first when the container is on a
network, so its veth is in place before anything runs), and becomes PID 1.
There it mounts the root (an overlay: the image's layers, read-only, under a
fresh writable layer), a new /proc, a minimal /dev and read-only /sys, masks
Docker's masked paths, pivots into the root and detaches the old one, drops
to Docker's default capabilities with no_new_privs and a seccomp filter, and
then starts the command as its child: PID 1 stays a tiny init that reaps
orphans and forwards signals, and leaves with the command's exit status.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycontain.container_config import ContainerConfig, make_config, parse_command, parse_env, parse_signal
from pycontain.container_gc import CGROUP_PARENT, alive, container_key
from pycontain.errors import (
    AlreadyExists,
    InvalidArgument,
    KernelError,
    NotFound,
    PycontainError,
    Timeout,
    kernel_error,
)
from pycontain.statedir import (
    containers_dir,
    create_json,
    ensure_dir,
    read_json,
    rewrite_json,
    rootfs_dir,
    state_dir,
    store_dir,
    validate_name,
    write_json,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from pycontain.cgroup import Cgroup
    from pycontain.engine import Child
    from pycontain.stats import Monitor

#: The namespaces every container gets. "user" is opt-in (userns=True), as in
#: Docker; "cgroup" hides the host's cgroup paths from /proc/self/cgroup.
DEFAULT_NAMESPACES = frozenset({"mnt", "pid", "uts", "ipc", "net", "cgroup"})

#: Exit status of a process killed by SIGKILL (the OOM killer's signal), as shells report it.
EXIT_SIGKILL = 128 + signal.SIGKILL

_ENV_DEFAULT = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM": "xterm"}


@dataclass
class RunResult:
    """What :func:`run` returns."""

    returncode: int
    stdout: str
    stderr: str
    oom_killed: bool
    stats: pd.DataFrame
    name: str = ""
    wall_s: float = 0.0
    usage: dict[str, float] = field(default_factory=dict)

    def check_returncode(self) -> None:
        """Raise :class:`ContainerFailed` if the command did not exit with 0."""
        if self.returncode != 0:
            raise ContainerFailed(self)


class ContainerFailed(PycontainError):
    """A command in a container exited with a non-zero status."""

    def __init__(self, result: RunResult) -> None:
        what = "was OOM-killed" if result.oom_killed else f"exited with {result.returncode}"
        super().__init__(f"container {result.name} {what}", op="run", value=result.returncode,
                         hint=(result.stderr.strip().splitlines() or [""])[-1][:200] or None)
        self.result = result


class Container:
    """A Linux container: new namespaces, a cgroup with limits, a copy-on-write root.

    Args:
        image: an :class:`~pycontain.Image`, a tag in the store, or ``"host"``
            (the host's root, read-only, under a fresh writable layer).
        command: argv (list) or a string split like a shell would; defaults to
            the image's entrypoint + cmd, or ``["sh"]``.
        name: a unique name (letters, digits, ``_ . -``); generated if None.
        memory, cpus, pids, cpuset: limits (``"512M"``, ``0.5``, ``64``, ``"0-1"``).
        network: ``"none"`` (own net namespace, loopback only; the default),
            ``"host"``, ``"bridge"``, or a :class:`~pycontain.Network`.
        hostname, env, volumes, workdir, user: as in ``docker run``.
        read_only: mount the root read-only.
        cap_add, cap_drop: change Docker's default capability set.
        seccomp: ``"default"`` (Docker's default filter), ``"unconfined"`` or a
            path to a Docker-format JSON profile.
        detach: outlive the creating process (otherwise the container dies with it).
        ports: ``{host_port: container_port}``, served on 127.0.0.1.
        bandwidth: a rate limit for the container's traffic, both directions
            (``"20mbit"`` or bits/s; needs a network).
        storage_size: the most the writable layer may hold (``"64M"``); writes
            beyond get ENOSPC and ``usage()["storage_full"]`` says so. The
            layer then lives on a tmpfs (memory, charged to the container's
            memory cgroup) until remove(); overlay driver only.
        userns: run the container in a user namespace of its own (like
            ``podman run --userns`` or Docker's userns-remap). None (the
            default): the container's root is the host's root, confined by
            capabilities, seccomp and namespaces. ``True`` or ``"auto"``:
            its ids 0..65535 are host ids 100000..165535; or an id map
            ``"inside outside count"`` (lines split by newlines or ``;``) for
            uids and gids, or ``{"uid_map": ..., "gid_map": ...}``. Inside,
            ``id`` says 0 and the image's files belong to root (the layers
            are idmapped mounts, so the writable layer still commits as
            uid 0); on the host its processes, and the files it creates in
            volumes, are the mapped ids (100000). Its capabilities count
            only inside the user namespace, which owns none of the
            container's other namespaces: even with ``cap_add=["ALL"]`` it
            cannot load modules, mount, set the hostname or override the
            permissions of host files. The map must map inside id 0 and not
            reach host id 0. Overlay storage driver only.

    Raises:
        InvalidArgument: for any bad option, before anything is created.
        AlreadyExists: the name is taken.

    A Container is a context manager: ``with`` starts it (if not started)
    and removes it at the end. ``status`` is one of "created", "running",
    "paused", "exited".
    """

    def __init__(
        self,
        image: Any = "host",
        command: Any = None,
        name: str | None = None,
        memory: Any = None,
        cpus: Any = None,
        pids: Any = None,
        cpuset: Any = None,
        network: Any = "none",
        hostname: str | None = None,
        env: Any = None,
        volumes: Any = None,
        workdir: str | None = None,
        user: Any = None,
        read_only: bool = False,
        cap_add: Any = (),
        cap_drop: Any = (),
        seccomp: Any = "default",
        detach: bool = False,
        ports: Any = None,
        bandwidth: Any = None,
        storage_size: Any = None,
        userns: Any = None,
    ) -> None:
        self.config: ContainerConfig = make_config(
            image=image, command=command, name=name, memory=memory, cpus=cpus, pids=pids, cpuset=cpuset,
            network=network, hostname=hostname, env=env, volumes=volumes, workdir=workdir, user=user,
            read_only=read_only, cap_add=cap_add, cap_drop=cap_drop, seccomp=seccomp, detach=detach,
            ports=ports, bandwidth=bandwidth, storage_size=storage_size, userns=userns,
        )
        self._external = False
        self.name = self.config.name
        #: unique per container even across state directories: the cgroup
        #: tree is shared by every pycontain user of the host.
        self.id = os.urandom(8).hex()  # secrets.token_hex(8), without importing secrets (~6 ms)
        #: names the cgroup and the writable layer, so garbage collection can
        #: judge them by their creator even without the state (container_gc).
        self._key = container_key(self.name, self.id, os.getpid(), self.config.detach)
        self._state_path = containers_dir() / self.name
        self._child: Child | None = None
        self._cgroup: Cgroup | None = None
        self._rootfs: Any = None
        self._network: Any = None
        self._status = "created"
        self._exit_code: int | None = None
        self._removed = False
        self._lock = threading.RLock()
        self._confinement: Any = None
        self._reserve()

    @classmethod
    def open(cls, name: str) -> Container:
        """The container ``name`` from the state directory, started by any process.

        Lifecycle methods (``stop``, ``kill``, ``pause``, ``exec``, ``stats``,
        ``remove``, ...) work on it as on the original object.

        Raises:
            NotFound: no container of that name.
        """
        state = get(name)
        opts = dict(state.get("options") or {})
        self = cls.__new__(cls)
        self.config = make_config(**opts)
        self._external = True
        self.name = state["name"]
        self.id = state.get("id") or ""
        self._key = state.get("key") or f"{self.name}-{self.id[:8]}"
        self._state_path = containers_dir() / self.name
        self._lock = threading.RLock()
        self._removed = False
        self._rootfs = None
        self._network = None
        self._confinement = None
        self._created = state.get("created")
        self._status = state.get("status", "created")
        self._exit_code = state.get("exit_code")
        self._cgroup = None
        self._child = None
        if state.get("cgroup"):
            from pycontain.cgroup import Cgroup

            opener = getattr(Cgroup, "open", None)
            if opener is not None:
                with contextlib.suppress(PycontainError):
                    self._cgroup = opener(state["cgroup"], parent=state.get("cgroup_parent") or "pycontain")
        with contextlib.suppress(PycontainError):
            self._rootfs = _Rootfs.reopen(self._layers_path())
        if state.get("pid") and self._status in ("running", "paused"):
            self._child = _ExternalProcess(int(state["pid"]), self._exit_path)  # type: ignore[assignment]
        if self._child is not None:
            from pycontain.backends import hardening

            self._confinement = hardening.prepare(self.config.cap_add, self.config.cap_drop, self.config.seccomp,
                                                  self.config.workdir or "/", self.config.user)
        return self

    def logs(self) -> str:
        """What a container started with ``log=True`` (or detached from the CLI) wrote."""
        try:
            with open(self._state_path / "output.log", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    # -- state ----------------------------------------------------------------------------

    def _reserve(self) -> None:
        """Claim the name in the state directory (atomically: mkdir, or the
        rename of a spare directory that refuses to replace anything)."""
        if _STATE_SPARES.reuse(self):
            return
        try:
            ensure_dir(containers_dir())
            os.mkdir(self._state_path, 0o700)
        except FileExistsError:
            raise _name_taken(self.name) from None
        except OSError as e:
            raise kernel_error("mkdir", e.errno or errno.EACCES, path=self._state_path,
                               hint="containers need root (or set PYCONTAIN_STATE_DIR to a writable "
                                    "directory); pycontain.doctor() says what this host allows") from None
        try:
            self._save(how="create")
        except BaseException:
            os.rmdir(self._state_path)  # (create_json removed its file) nothing half-made stays
            raise

    def _save(self, how: str = "replace", **extra: Any) -> None:
        """Record the state in state.json. ``how``: "replace" (a new file
        renamed over the old: atomic for readers), "create" (the first
        write, into the directory _reserve just made) or "in_place" (one
        pwrite over the old text: no inode made or freed, for the save that
        is on every start's path; readers retry a torn read)."""
        if self._external:
            # Another process created it: update what changed, keep the rest
            # (creator pid, options) as its creator recorded them.
            if self._removed:
                return
            with contextlib.suppress(OSError, ValueError):
                data = dict(read_json(self._state_path / "state.json"))
                data.update(status=self._status, exit_code=self._exit_code, **extra)
                write_json(self._state_path / "state.json", data)
            return
        data = {
            "name": self.name,
            "id": self.id,
            "status": self._status,
            "pid": self._child.pid if self._child is not None else None,
            "creator_pid": os.getpid(),
            "detach": self.config.detach,
            "image": self.config.image if isinstance(self.config.image, str) else getattr(
                self.config.image, "tag", None) or getattr(self.config.image, "digest", "?"),
            "command": list(self.config.command) if self.config.command else None,
            "created": getattr(self, "_created", None) or time.time(),
            "exit_code": self._exit_code,
            "cgroup": self._cgroup.name if self._cgroup is not None else None,
            "cgroup_parent": CGROUP_PARENT,
            "key": self._key,
            "memory": self.config.memory,
            "cpus": self.config.cpus,
            "pids_limit": self.config.pids,
            "network": self.config.network if isinstance(self.config.network, str) else getattr(
                self.config.network, "name", "?"),
            "userns": self.config.userns.record() if self.config.userns is not None else None,
            "options": _options_record(self.config),
        }
        self._created = data["created"]
        data.update(extra)
        if self._removed:
            return
        path = self._state_path / "state.json"
        if how == "create":
            create_json(path, data)
        elif how == "in_place":
            rewrite_json(path, data)
        else:
            write_json(path, data)

    @property
    def status(self) -> str:
        """"created", "running", "paused" or "exited"."""
        with self._lock:
            if self._status in ("running", "paused") and self._child is not None \
                    and self._poll_child() is not None:
                self._finish()
            return self._status

    def _poll_child(self) -> int | None:
        """The PID 1's return code if it ended, else None.

        If the zygote that forked it is gone (at interpreter exit it may
        close before this container is removed), its status went with it:
        from then on the container is watched like one opened from another
        process, by pid and by the ``exit`` file its init writes.
        """
        assert self._child is not None
        try:
            return self._child.poll()
        except KernelError:
            if isinstance(self._child, _ExternalProcess):
                raise
            external = _ExternalProcess(self._child.pid, self._exit_path)
            self._child = external  # type: ignore[assignment]
            return external.poll()

    @property
    def pid(self) -> int | None:
        """The host pid of the container's PID 1 (None before start)."""
        return self._child.pid if self._child is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once exited (128+N when killed by signal N)."""
        self.status  # noqa: B018 - refreshes
        return self._exit_code

    @property
    def ip(self) -> str | None:
        """The container's address on its network (None for "none" and "host")."""
        return getattr(self._network, "ip", None)

    @property
    def cgroup(self) -> Cgroup | None:
        """The container's :class:`~pycontain.Cgroup` (after start)."""
        return self._cgroup

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.status}>"

    # -- start ----------------------------------------------------------------------------------

    def start(self, *, stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
              log: bool = False) -> Container:
        """Create the cgroup, root and namespaces and start the command.

        ``stdout``/``stderr`` are file descriptors for the command's output
        (default: the caller's). With ``log=True`` both go to the container's
        log file instead (see :meth:`logs`), as for detached containers.
        Returns ``self``.

        Raises:
            InvalidArgument: the container was started already.
            KernelError, PermissionDenied: a setup step failed; nothing is left behind.
        """
        argv = self._argv()
        if not log:
            return self._start(argv=argv, target=None, stdin=stdin, stdout=stdout, stderr=stderr)
        fd = os.open(self._state_path / "output.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            return self._start(argv=argv, target=None, stdin=stdin, stdout=fd, stderr=fd)
        finally:
            os.close(fd)

    def start_python(self, fn: Callable[..., Any], args: Sequence[Any] = (), *, stdout: int | None = None,
                     stderr: int | None = None, pass_fds: Sequence[int] = (), zygote: Any = None) -> Container:
        """Start the container with ``fn(*args)`` as its workload instead of a command.

        By default the function runs in a fork of the caller, so it sees the
        caller's memory (copy-on-write) and needs no Python in the image.
        With ``zygote=`` (a :class:`pycontain.engine.Zygote`) it runs in a
        fork of that helper instead, and ``fn`` and ``args`` travel by
        cloudpickle. What it returns is its exit status (an int, or 0).
        Used by ``%%container``.
        """
        return self._start(argv=None, target=(fn, tuple(args)), stdin=None, stdout=stdout, stderr=stderr,
                           pass_fds=pass_fds, zygote=zygote)

    def _argv(self) -> tuple[str, ...]:
        if self.config.command:
            return self.config.command
        image = self._image_config()
        argv = list(image.get("entrypoint") or []) + list(image.get("cmd") or [])
        return parse_command(argv or ["sh"])

    #: The Image the config names, resolved once (see _image).
    _resolved_image: Any = None

    def _image(self) -> Any:
        """The :class:`~pycontain.Image` of this container: a tag is looked up
        once (a look-up reads every image record of the store)."""
        if self._resolved_image is None:
            self._resolved_image = _image_of(self.config)
        return self._resolved_image

    def _image_config(self) -> dict[str, Any]:
        """The image's defaults: env, cmd, entrypoint, workdir, user."""
        if self.config.image == "host":
            return {}
        cfg = self._image().config
        return {"env": list(cfg.env), "cmd": list(cfg.cmd or []), "entrypoint": list(cfg.entrypoint or []),
                "workdir": cfg.workdir or None, "user": cfg.user or None}

    def _start(self, *, argv: Sequence[str] | None, target: tuple[Callable[..., Any], tuple[Any, ...]] | None,
               stdin: int | None, stdout: int | None, stderr: int | None, pass_fds: Sequence[int] = (),
               zygote: Any = None) -> Container:
        from pycontain.backends import hardening
        from pycontain.cgroup import Cgroup
        from pycontain.container_gc import collect
        from pycontain.engine import ChildSpec, start

        with self._lock:
            if self._removed:
                raise NotFound("the container was removed", field="name", value=self.name)
            if self._status != "created":
                raise InvalidArgument(f"the container is {self._status}, not created", field="status",
                                      value=self._status, hint="make a new Container to run again")
            cleanup = contextlib.ExitStack()
            holder: _UserNamespaceHolder | None = None
            try:
                if self.config.userns is not None:
                    _check_userns_storage(self.config, self._image())
                # 1. the writable root
                with _no_space("prepare the writable layer", rootfs_dir()):
                    self._rootfs = _prepare_rootfs(self.config, self._image(), self._layers_path(), self._key)
                cleanup.callback(self._rootfs.release)
                _fault("after_rootfs")
                # 2. the cgroup, with every limit
                cg = Cgroup(self._key, parent=CGROUP_PARENT, memory=self.config.memory, cpus=self.config.cpus,
                            pids=self.config.pids, cpuset=self.config.cpuset)
                cleanup.callback(cg.remove)
                self._cgroup = cg
                _prune_parent_at_exit()
                _fault("after_cgroup")
                # 3. the network namespace, made first when a network needs it
                net = _prepare_network(self)
                cleanup.callback(net.release)
                self._network = net
                _fault("after_network")
                new = set(DEFAULT_NAMESPACES)
                join: list[tuple[str, str]] = []
                if net.netns_path is not None:
                    new.discard("net")
                    join.append(("net", net.netns_path))
                elif self.config.network == "host":
                    new.discard("net")
                if self._rootfs.sized is not None:
                    # start from the namespace that holds the size-limited layer
                    join.append(("mnt", self._rootfs.sized.nsfile))
                image_cfg = self._image_config()
                env = dict(_ENV_DEFAULT)
                env.update(_image_env(image_cfg))
                env.update(self.config.env)
                env.setdefault("HOSTNAME", self.config.hostname or self.name[:63])
                self._confinement = hardening.prepare(
                    self.config.cap_add, self.config.cap_drop, self.config.seccomp,
                    self.config.workdir or image_cfg.get("workdir") or "/",
                    self.config.user or image_cfg.get("user") or None,
                )
                exit_fd = os.open(self._exit_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                                  0o600)
                cleanup.callback(os.close, exit_fd)
                rootfs_plan = self._rootfs.sized.plan if self._rootfs.sized is not None else self._rootfs.plan
                if self.config.userns is not None:
                    # 4. the user namespace with its maps, kept by a helper until PID 1 joined it
                    holder = _UserNamespaceHolder(self.config.userns)
                    cleanup.callback(holder.release)
                setup = _ChildSetup(
                    root_plan=rootfs_plan,
                    root_target=self._rootfs.target,
                    config=self.config,
                    confinement=self._confinement,
                    hosts=net.hosts_file(self.config.hostname or self.name[:63]),
                    loopback=self.config.network != "host",
                    hosts_path=getattr(net, "hosts_path", None),
                    # Not an option: set only by the sandbox tests' calibration runs.
                    allow_new_privs=getattr(self, "_test_allow_new_privs", False) is True,
                    userns_path=holder.path if holder is not None else None,
                )
                spec = ChildSpec(
                    target=_container_init,
                    args=(setup, tuple(argv) if argv is not None else None, target, env, exit_fd),
                    new=frozenset(new),
                    join=tuple(join),
                    cgroup_procs=tuple(cg.procs_files),
                    hostname=self.config.hostname or self.name[:63],
                    stdin=stdin,
                    stdout=stdout,
                    stderr=stderr,
                    pass_fds=(*pass_fds, exit_fd),
                    pdeathsig=None if self.config.detach else signal.SIGKILL,
                    preexec=setup.enter,
                    env=env,
                    returns=False,  # _container_init never returns: no cloudpickle for it
                )
                # While our child sets itself up: the state says running (its
                # pid is known now), and what crashed creators left behind is
                # collected (cheap when there is nothing; never raises).
                def meanwhile(pid: int) -> None:
                    self._save("in_place", status="running", pid=pid)
                    collect()

                self._child = start(spec, zygote=zygote if target is not None else _fork_source(),
                                    meanwhile=meanwhile)
                _fault("after_engine_start")
                if holder is not None:
                    holder.release()  # PID 1 is in the namespace now: it lives as long as the container
                cleanup.pop_all()
                os.close(exit_fd)
            except BaseException:
                cleanup.close()
                self._cgroup = None
                self._rootfs = None
                self._network = None
                with contextlib.suppress(OSError, ValueError):
                    self._save()  # created again, if meanwhile said running
                raise
            self._status = "running"
            _fault("after_state_saved")  # (saved as running while the child set itself up)
            return self

    @property
    def _exit_path(self) -> Path:
        """The ``exit`` file: PID 1 writes the workload's status there as it
        leaves, for every process (wait, containers(), another process's open)."""
        return self._state_path / "exit"

    def _layers_path(self) -> Path:
        return rootfs_dir() / self._key

    # -- lifecycle --------------------------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the command to end; return its exit status (128+N if killed by signal N).

        Raises:
            Timeout: still running after ``timeout`` seconds.
            InvalidArgument: never started.
        """
        child = self._need_child("wait")
        try:
            try:
                if isinstance(child, _ExternalProcess):
                    code = child.wait(timeout)
                else:
                    # PID 1's exit file, once it is gone: no hop through the zygote.
                    exit_file = self._exit_path
                    code = child.wait(timeout, status_from=lambda: _exit_file_status(exit_file))
            except KernelError:  # the zygote is gone (see _poll_child)
                self._poll_child()
                code = self._need_child("wait").wait(timeout)
        except Timeout:
            raise Timeout(f"container {self.name} still running after {timeout} s", op="wait",
                          field="timeout", value=timeout) from None
        with self._lock:
            self._finish()
        return self._exit_code if self._exit_code is not None else _status_code(code)

    def _finish(self) -> None:
        """Record the exit; the cgroup stays (for stats) until remove()."""
        if self._status == "exited" or self._child is None:
            return
        code = self._poll_child()
        if code is None:
            return
        self._exit_code = _status_code(code)
        self._status = "exited"
        if self._cgroup is not None and self._cgroup.frozen:
            self._cgroup.thaw()
        if self._external or _exit_file_status(self._exit_path) != self._exit_code:
            # Other processes read the exit from the state's ``exit`` file,
            # which PID 1 wrote as it left (see _refresh); only a status it
            # could not write (PID 1 killed) needs recording here. Skipping
            # the rewrite saves an ext4 create + rename per container.
            self._save()

    def _need_child(self, op: str) -> Child:
        if self._child is None:
            raise InvalidArgument(f"cannot {op}: the container was not started", field="status",
                                  value=self._status, hint="call start() first")
        return self._child

    def kill(self, sig: Any = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to the container's PID 1, which forwards it.

        SIGKILL ends every process of the container at once.

        Raises:
            InvalidArgument: unknown signal, or not started.
        """
        signum = parse_signal(sig)
        child = self._need_child("kill")
        if self.status == "exited":
            return
        if signum == signal.SIGKILL and self._cgroup is not None:
            # Killing PID 1 kills the pid namespace; thaw first so a paused
            # container can die (a frozen task cannot handle SIGKILL on v1).
            if self._cgroup.frozen:
                self._cgroup.thaw()
        child.kill(signum)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self._child is None or self.status == "exited":
            return self._exit_code if self._exit_code is not None else 0
        if self._cgroup is not None and self._cgroup.frozen:
            self._cgroup.thaw()
            self._status = "running"
        self.kill(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except Timeout:
            self.kill(signal.SIGKILL)
            return self.wait()

    def pause(self) -> None:
        """Freeze every process of the container (the freezer controller)."""
        if self.status != "running":
            raise InvalidArgument(f"cannot pause a {self._status} container", field="status", value=self._status)
        assert self._cgroup is not None
        self._cgroup.freeze()
        self._status = "paused"
        self._save()

    def resume(self) -> None:
        """Thaw a paused container."""
        if self.status != "paused":
            raise InvalidArgument(f"cannot resume a {self._status} container", field="status", value=self._status)
        assert self._cgroup is not None
        self._cgroup.thaw()
        self._status = "running"
        self._save()

    def remove(self, force: bool = False) -> None:
        """Remove the container: its cgroup, writable layer, network and state.

        A running container is killed first when ``force`` is true (the
        context manager does that); otherwise removing it raises. Idempotent.
        """
        with self._lock:
            if self._removed:
                return
            if self.status in ("running", "paused"):
                if not force:
                    raise InvalidArgument("the container is running", field="status", value=self._status,
                                          hint="stop() it first, or remove(force=True)")
                self.kill(signal.SIGKILL)
                self.wait()
            errors: list[BaseException] = []
            for step in (self._release_cgroup, self._release_network, self._release_rootfs):
                try:
                    step()
                except BaseException as e:  # keep going: leave as little as possible behind
                    errors.append(e)
            from pycontain.backends.storage_driver import remove_dir

            if self._external or not _STATE_SPARES.keep(self._state_path):
                with contextlib.suppress(OSError):
                    remove_dir(str(self._state_path), _STATE_FILES)
            self._removed = True
            if errors:
                raise errors[0]

    def _release_cgroup(self) -> None:
        if self._cgroup is not None:
            self._cgroup.remove(keep_parent=True)  # the standing pycontain/containers
            self._cgroup = None

    def _release_network(self) -> None:
        if self._network is not None:
            self._network.release()
            self._network = None

    def _release_rootfs(self) -> None:
        if self._rootfs is not None:
            self._rootfs.release()  # the layer's directory too
            self._rootfs = None
        else:
            shutil.rmtree(self._layers_path(), ignore_errors=True)

    def __enter__(self) -> Container:
        if self._status == "created" and self._child is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove(force=True)

    # -- inside ------------------------------------------------------------------------------------------

    def _join_spec(self, **kw: Any) -> dict[str, Any]:
        """ChildSpec fields to enter this running container (its namespaces and cgroup)."""
        if self.status != "running":
            raise InvalidArgument(f"cannot enter a {self._status} container", field="status", value=self._status,
                                  hint="start() it (or resume() a paused one) first")
        assert self._child is not None and self._cgroup is not None
        pid = self._child.pid
        kinds = [k for k in ("ipc", "uts", "net", "pid", "cgroup", "mnt") if k in DEFAULT_NAMESPACES]
        if self.config.network == "host":
            kinds.remove("net")
        if self._network is not None and self._network.netns_path is not None:
            kinds.remove("net")
            kw.setdefault("join_extra", [("net", self._network.netns_path)])
        join = [(k, f"/proc/{pid}/ns/{k}") for k in kinds] + kw.pop("join_extra", [])
        return dict(join=tuple(join), cgroup_procs=tuple(self._cgroup.procs_files), **kw)

    def exec(self, argv: Any, *, env: Any = None, workdir: str | None = None, stdin: int | None = None,
             stdout: int | None = None, stderr: int | None = None, wait: bool = True,
             timeout: float | None = None) -> Any:
        """Run a new process inside the running container (its namespaces, cgroup
        and restrictions). Returns the exit status, or the running
        :class:`~pycontain.engine.Child` with ``wait=False``.

        Raises:
            InvalidArgument: bad argv, or the container is not running.
        """
        from pycontain.engine import ChildSpec, start

        command = parse_command(argv, "argv")
        full_env = dict(_ENV_DEFAULT)
        full_env.update(self.config.env)
        full_env.update(parse_env(env))
        setup = _ExecSetup(self._exec_confinement(workdir), userns=self.config.userns is not None)
        child = start(ChildSpec(argv=command, env=full_env, stdin=stdin, stdout=stdout, stderr=stderr,
                                preexec=setup.enter, **self._join_spec()))
        if not wait:
            return child
        return _status_code(child.wait(timeout))

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` inside the running container and return its value.

        The function runs in a new process in the container's namespaces,
        cgroup and restrictions; it and its result cross by cloudpickle. An
        exception inside is raised here with the remote traceback attached.
        """
        from pycontain.engine import ChildSpec, start

        setup = _ExecSetup(self._exec_confinement(None), userns=self.config.userns is not None)
        # Leaving the with block kills a child that outlived the timeout.
        with start(ChildSpec(target=fn, args=args, kwargs=kwargs, preexec=setup.enter,
                             **self._join_spec())) as child:
            return child.result(timeout)

    def _exec_confinement(self, workdir: str | None) -> Any:
        import dataclasses

        conf = self._confinement
        return dataclasses.replace(conf, workdir=workdir) if workdir else conf

    # -- the writable layer ----------------------------------------------------------------

    def _need_rootfs(self, op: str) -> Any:
        if self._rootfs is None:
            raise InvalidArgument(f"cannot {op}: the container has no root yet", field="status",
                                  value=self._status, hint="start() it first")
        return self._rootfs

    def diff(self) -> pd.DataFrame:
        """What the container changed: a DataFrame of ``path``, ``change``
        (A added, C changed, D deleted), ``size`` and ``type``. Works while
        it runs and after it exited (until remove())."""
        import pandas as pd

        rootfs = self._need_rootfs("diff")
        if rootfs.sized is not None:
            changes = rootfs.sized.run(rootfs.driver.diff, rootfs.sized.plan)
        else:
            changes = rootfs.driver.diff(rootfs.plan)
        return pd.DataFrame([(c.path, c.change, c.size, c.type) for c in changes],
                            columns=["path", "change", "size", "type"])

    def commit(self, tag: str | None = None, *, created_by: str | None = None, **config_changes: Any) -> Any:
        """A new :class:`~pycontain.Image`: the container's image plus its
        writable layer on top (the layers below are shared, not copied).

        ``config_changes`` (``cmd``, ``env``, ``workdir``, ...) change the new
        image's config. Commit a stopped or paused container for a
        consistent layer.
        """
        import tempfile

        from pycontain.image import Layer

        rootfs = self._need_rootfs("commit")
        store = rootfs.image.store
        with _no_space("commit", store.root), \
                tempfile.NamedTemporaryFile(dir=store.root, prefix=".commit-", suffix=".tar") as f:
            if rootfs.sized is not None:
                rootfs.sized.run(_commit_into, rootfs.driver, rootfs.sized.plan, f.name)
            else:
                rootfs.driver.commit(rootfs.plan, f)
            f.flush()
            layer = Layer.from_tar(f.name, store=store)
        return rootfs.image.with_layer(layer, tag=tag, created_by=created_by or f"pycontain commit {self.name}",
                                       **config_changes)

    # -- observing ----------------------------------------------------------------------------------

    def usage(self) -> dict[str, Any]:
        """Resource usage so far as a dict (cgroup counters + ``oom_killed``)."""
        data: dict[str, Any] = {}
        if self._cgroup is not None:
            try:
                data.update(self._cgroup.stats_dict())
            except PycontainError:
                pass
        data.update(self._net_counters())
        sized = getattr(self._rootfs, "sized", None)
        if sized is not None:
            data.update(sized.usage())
        kills = data.get("oom_kill_events", 0) or 0
        data["oom_killed"] = bool(kills == kills and kills > 0)
        return data

    @property
    def oom_killed(self) -> bool:
        """True if the kernel's OOM killer killed a process of this container."""
        return bool(self.usage()["oom_killed"])

    def _net_counters(self) -> dict[str, float]:
        if self._child is None or self.config.network == "host":
            return {}
        from pycontain.kernel.proc import net_dev

        try:
            devs = net_dev(self._child.pid)
        except PycontainError:
            return {}
        rx = sum(d["rx_bytes"] for name, d in devs.items() if name != "lo")
        tx = sum(d["tx_bytes"] for name, d in devs.items() if name != "lo")
        rxp = sum(d["rx_packets"] for name, d in devs.items() if name != "lo")
        txp = sum(d["tx_packets"] for name, d in devs.items() if name != "lo")
        return {"net_rx_bytes": rx, "net_tx_bytes": tx, "net_rx_packets": rxp, "net_tx_packets": txp}

    def _sample(self) -> dict[str, float]:
        if self._cgroup is None:
            raise NotFound("container has no cgroup", field="name", value=self.name)
        data: dict[str, float] = self._cgroup.stats_dict()
        data.update(self._net_counters())
        return data

    def stats(self, stream: bool = False, interval: float = 0.5) -> Any:
        """Usage now as a pandas Series, or with ``stream=True`` an iterator of
        monitor rows every ``interval`` s while the container lives."""
        if stream:
            from pycontain.stats import stream as _stream

            return _stream(self._sample, interval)
        import pandas as pd

        return pd.Series(self.usage(), name=self.name)

    def monitor(self, interval: float = 0.1) -> Monitor:
        """Start a sampler whose ``.frame`` is a growing DataFrame of usage
        (``t_s``, ``cpu_s``, ``cpu_percent``, ``mem_bytes``, ...)."""
        from pycontain.stats import Monitor

        return Monitor(self._sample, interval).start()

    def posture(self, inside: bool = False) -> dict[str, Any]:
        """What the container's PID 1 is confined by, read from /proc from outside:
        namespaces, capabilities, seccomp mode, no_new_privs, mounts, limits.

        With ``inside=True``, the same as a process inside the container sees
        it (:func:`posture_inside`, run through :meth:`call`): its namespace
        ids, its own status, its mount table, and the limits read from its
        read-only ``/sys/fs/cgroup``. Comparing both (and both with the
        expected profile) is gVisor's sandbox-posture test.
        """
        if inside:
            result: dict[str, Any] = self.call(posture_inside, timeout=60)
            return result
        from pycontain.kernel import proc
        from pycontain.kernel.syscalls import cap_names

        child = self._need_child("inspect")
        st = proc.status(child.pid)
        # "own" relative to the creator (on the host): host PID 1 may live in
        # other namespaces than we do (a VM's agent, a sandbox), or be unreadable.
        host = proc.namespace_ids(os.getpid())
        mine = proc.namespace_ids(child.pid)
        return {
            "namespaces": {k: ("own" if host.get(k) != v else "host") for k, v in mine.items()},
            # (status keys: CapEff CapPrm CapInh CapBnd CapAmb, proc(5))
            "capabilities": {s: cap_names(int(st[key], 16))
                             for s, key in (("effective", "CapEff"), ("permitted", "CapPrm"),
                                            ("inheritable", "CapInh"), ("bounding", "CapBnd"), ("ambient", "CapAmb"))
                             if key in st},
            "seccomp": {"0": "disabled", "1": "strict", "2": "filter"}.get(st.get("Seccomp", ""), "?"),
            "no_new_privs": st.get("NoNewPrivs") == "1",
            "mounts": [(m.mount_point, m.fstype, ",".join(m.options)) for m in proc.mountinfo(child.pid)],
            "limits": {"memory": self.config.memory, "cpus": self.config.cpus, "pids": self.config.pids,
                       "cpuset": sorted(self.config.cpuset) if self.config.cpuset else None},
        }


#: Where ``PYCONTAIN_FAULT=<point>`` kills the creating process (SIGKILL), to
#: test that garbage collection finds what a crash half-way leaves behind.
FAULT_POINTS = ("after_rootfs", "after_cgroup", "after_network", "after_engine_start", "after_state_saved")


@contextlib.contextmanager
def _no_space(op: str, where: Any) -> Iterator[None]:
    """A full disk under the store is a typed error with a hint, not a bare OSError."""
    try:
        yield
    except OSError as e:
        if isinstance(e, PycontainError) or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        from pycontain.errors import kernel_error

        raise kernel_error(op, e.errno, path=str(where),
                           hint="the disk of the image store is full: free space (pycontain image prune, "
                                "removing containers) or set PYCONTAIN_STORE to a larger disk") from None


def _fault(point: str) -> None:
    """Fault injection for tests: die here if ``PYCONTAIN_FAULT`` names this point."""
    if os.environ.get("PYCONTAIN_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


def posture_inside() -> dict[str, Any]:
    """Run inside a container (``c.call(posture_inside)``, or ``c.posture(inside=True)``):
    the confinement as the container itself sees it.

    Keys: ``namespaces`` (kind -> inode, to compare with the host's),
    ``capabilities`` (set -> names), ``seccomp`` ("filter"...),
    ``no_new_privs``, ``mounts`` ((point, fstype, options) tuples) and
    ``limits`` (``memory`` bytes, ``cpus``, ``pids``, ``cpuset``; None where
    unlimited), read from the container's own ``/sys/fs/cgroup``.
    """
    from pycontain.backends.posture import read_posture

    p = read_posture(os.getpid(), reference=os.getpid())
    return {
        "namespaces": dict(p.namespaces),
        "capabilities": {k: list(v) for k, v in p.capabilities.items()},
        "seccomp": p.seccomp,
        "no_new_privs": p.no_new_privs,
        "mounts": [tuple(m) for m in p.mounts],
        "limits": _limits_inside(),
    }


def _limits_inside() -> dict[str, Any]:
    """The cgroup limits a container sees at the root of its cgroup namespace."""
    from pycontain.kernel import cgroupfs

    layout = cgroupfs.layout()

    def read(path: str | None) -> str | None:
        if path is None:
            return None
        try:
            return cgroupfs.read(path).strip()
        except (PycontainError, OSError):
            return None

    v1 = layout.v1_mounts
    v2 = layout.v2_mount if layout.mode == "v2" else None

    def at(ctrl: str, v1_file: str, v2_file: str) -> str | None:
        if v2 is not None:
            return read(f"{v2}/{v2_file}")
        return read(f"{v1[ctrl]}/{v1_file}") if ctrl in v1 else None

    memory = at("memory", "memory.limit_in_bytes", "memory.max")
    pids = at("pids", "pids.max", "pids.max")
    cpuset = at("cpuset", "cpuset.cpus", "cpuset.cpus.effective")
    if v2 is not None:
        quota_text, _, period_text = (read(f"{v2}/cpu.max") or "max 100000").partition(" ")
    else:
        quota_text = at("cpu", "cpu.cfs_quota_us", "") or "-1"
        period_text = at("cpu", "cpu.cfs_period_us", "") or "100000"
    quota = None if quota_text in ("max", "-1") else int(quota_text)
    mem = None if memory in (None, "max") or int(memory) >= 1 << 62 else int(memory)
    cpus: set[int] = set()
    for part in (cpuset or "").split(","):
        if part:
            lo, _, hi = part.partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return {
        "memory": mem,
        "cpus": None if quota is None else quota / int(period_text),
        "pids": None if pids in (None, "max") else int(pids),
        "cpuset": sorted(cpus) or None,
    }


class _ExternalProcess:
    """A container PID 1 started by another process: we cannot waitpid() it,
    so exit is seen through a pidfd and the status read from the ``exit``
    file its init writes."""

    def __init__(self, pid: int, exit_file: Path) -> None:
        self.pid = pid
        self.exit_file = exit_file
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not alive(self.pid):
            self.returncode = self._read_status()
        return self.returncode

    def _read_status(self) -> int:
        code = _exit_file_status(self.exit_file)
        return EXIT_SIGKILL if code is None else code  # no word from init: it was killed

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise Timeout("still running", op="wait", field="timeout", value=timeout)
            time.sleep(0.02)
        assert self.returncode is not None
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


def _options_record(cfg: ContainerConfig) -> dict[str, Any]:
    """The options as JSON, enough to rebuild the config in another process."""
    return {
        "image": cfg.image if isinstance(cfg.image, str) else (getattr(cfg.image, "tag", None) or "host"),
        "command": list(cfg.command) if cfg.command else None,
        "name": cfg.name,
        "memory": cfg.memory,
        "cpus": cfg.cpus,
        "pids": cfg.pids,
        "cpuset": ",".join(str(c) for c in sorted(cfg.cpuset)) if cfg.cpuset else None,
        "network": cfg.network if isinstance(cfg.network, str) else getattr(cfg.network, "name", "none"),
        "hostname": cfg.hostname,
        "env": cfg.env,
        "workdir": cfg.workdir,
        "user": cfg.user,
        "read_only": cfg.read_only,
        "cap_add": list(cfg.cap_add),
        "cap_drop": list(cfg.cap_drop),
        "seccomp": cfg.seccomp,
        "detach": cfg.detach,
        "ports": {str(k): v for k, v in cfg.ports.items()},
        "storage_size": cfg.storage_size,
        "userns": cfg.userns.record() if cfg.userns is not None else None,
        "volumes": [f"{v.source}:{v.destination}:{'ro' if v.read_only else 'rw'}" for v in cfg.volumes
                    if os.path.exists(v.source)],
    }


def _status_code(code: int) -> int:
    """Engine returncodes are negative for signals; containers report 128+N like shells."""
    return 128 - code if code < 0 else code


def _image_env(cfg: dict[str, Any]) -> dict[str, str]:
    env = cfg.get("env") or {}
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    out = {}
    for item in env:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


# -- what the child does --------------------------------------------------------------------------------------


@dataclass
class _ChildSetup:
    """Everything PID 1 needs to set up the container; sent to the zygote by
    pickle (or inherited by a fork of the caller). The seccomp program was
    compiled in the caller."""

    root_plan: Any  # the storage driver's plan of the root (a picklable record)
    root_target: str
    config: ContainerConfig
    confinement: Any
    hosts: str | None
    loopback: bool
    hosts_path: str | None = None
    allow_new_privs: bool = False
    #: the user namespace to join (``userns=``): a /proc/PID/ns/user of the helper that holds it
    userns_path: str | None = None
    #: the rootfs plan (pycontain.backends.rootfs.RootfsPlan), checked here in
    #: the caller: the child only carries it out
    plan: Any = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        from pycontain.backends import rootfs

        volumes = [(v.source, v.destination, v.read_only) for v in self.config.volumes]
        files = {"/etc/hosts": self.hosts} if self.hosts else {}
        if self.hosts_path:
            # The network's hosts file, rewritten in place as containers join
            # and leave: a read-only bind keeps the names current.
            volumes.append((self.hosts_path, "/etc/hosts", True))
            files = {}
        self.plan = rootfs.RootfsPlan(self.root_target, mount_rootfs=self._mount_at, read_only=self.config.read_only,
                                      volumes=tuple(volumes), files=files,
                                      host_cgroups=rootfs.host_cgroup_mounts())

    def _mount_at(self, _target: str) -> None:
        self.mount_root()

    def enter(self) -> None:
        """Run in the container's PID 1 after unshare: root, /proc, /dev, hardening.

        With a user namespace, everything up to the hardening is done with
        the host's privilege (idmapped layers, mounts), then PID 1 joins
        the namespace as its root (:mod:`pycontain.backends.userns`).
        """
        from pycontain.backends import capabilities, hardening, rootfs
        from pycontain.engine.child import LOOPBACK_UP
        from pycontain.kernel import syscalls

        if self.allow_new_privs:
            # Test-only weakening (Container._test_allow_new_privs = True), so the
            # setuid/file-capability tests can show they fail without
            # no_new_privs. This process is a fork: the change dies with it.
            capabilities.set_no_new_privs = lambda: None  # type: ignore[assignment]

        if self.loopback and not LOOPBACK_UP:  # (the engine brings a new net namespace's lo up)
            syscalls.interface_up("lo")
        if self.userns_path is None:
            rootfs.enter_rootfs(self.plan)
        else:
            from pycontain.backends import userns
            from pycontain.kernel import nsfs

            ids = self.config.userns
            assert ids is not None
            if self.loopback:
                # Binding a port below 1024 needs CAP_NET_BIND_SERVICE over the
                # network namespace, which the host's user namespace owns: open
                # them all in the container's own netns, as Docker does for
                # every container (never with network="host": loopback is False).
                from pycontain.kernel.proc import write_net_sysctl

                write_net_sysctl("ipv4/ip_unprivileged_port_start", "0")
            # Opened first: the helper's /proc entry is gone once the host's /proc is.
            userns_fd = nsfs.open_namespace(self.userns_path)
            try:
                with userns.mapped_root(ids.root_uid, ids.root_gid):
                    rootfs.enter_rootfs(self.plan, mount_root=lambda: self.mount_root(userns_fd))
                userns.enter_user_namespace(userns_fd)
            finally:
                os.close(userns_fd)
        hardening.confine(self.confinement)
        _verify_cwd()

    def mount_root(self, userns_fd: int | None = None) -> None:
        """The image's layers on the root target, in our private mount namespace
        (idmapped through the user namespace ``userns_fd`` if given)."""
        from pycontain.backends import storage_driver

        plan = self.root_plan
        if userns_fd is not None:
            from pycontain.backends import userns

            plan = userns.idmap_plan(plan, self.root_target, userns_fd)
        storage_driver.mount_rootfs(plan, self.root_target)


#: Where containers are forked from: "zygote" (default), a small helper
#: process started once per Python process (pycontain.engine.shared_zygote),
#: so a container costs the same whatever the caller's size, and its PID 1
#: shares the zygote's pages, not the caller's; or "caller", a fork of the
#: calling process itself, for small single-threaded callers (the
#: ``pycontain`` CLI) that would pay more to start a zygote than they save.
#: Python workloads that must see the caller's memory (``%%container
#: --snapshot``) are always forked from the caller.
FORK_SOURCE = "zygote"

#: What the zygote imports once, so that no container imports it again.
_ZYGOTE_PRELOAD = (
    "pycontain.container",
    # What unpickling a container's setup imports (its config holds the
    # Image; its plan names the driver's module): ~3-7 ms in every child
    # if the zygote lacks them.
    "pycontain.image",
    "pycontain.backends.storage_overlay",
    "pycontain.backends.rootfs",
    "pycontain.backends.hardening",
    "pycontain.backends.capabilities",
    "pycontain.backends.seccomp",
    "pycontain.backends.storage_driver",
    "pycontain.backends.userns",
    "pycontain.kernel.syscalls",
)


#: What a zygote runs when its caller died without closing it: collect what
#: the caller's containers left behind, at once (and prune the standing
#: cgroup parent, which the caller's atexit would have done).
ZYGOTE_CLEANUP = "pycontain.container_gc:after_creator_died"

#: Whether this process removes the standing ``pycontain/containers`` cgroup
#: parent at exit once it is empty (container_gc.prune_standing_parent). The
#: CLI server's workers leave that to the server, which prunes when it stops:
#: a worker lives for one command, and the next would make it again.
PRUNE_PARENT_AT_EXIT = True

_PRUNE_REGISTERED: list[bool] = []


def _prune_parent_at_exit() -> None:
    """Once per process that started a container: prune the standing parent at exit."""
    if _PRUNE_REGISTERED:
        return
    _PRUNE_REGISTERED.append(True)
    import atexit

    def prune() -> None:
        if PRUNE_PARENT_AT_EXIT:
            from pycontain.container_gc import prune_standing_parent

            prune_standing_parent()

    atexit.register(prune)


#: What a container's state directory may hold, in removal order.
_STATE_FILES = ("state.json", "exit", "output.log")

#: Whether removed containers' state directories are kept for the next
#: containers of this process (_StateSpares). The CLI server's workers turn
#: it off: each lives for one command, so a spare would only be deleted at
#: its exit instead of at once.
RECYCLE_STATE_DIRS = True


class _StateSpares:
    """State directories of removed containers, kept for the next ones.

    Why: this host's ext4 has no journal, and there the inode allocator skips
    every inode freed in the last ~30 s whose inode-table block is still
    dirty (fs/ext4/ialloc.c, recently_deleted()), one buffer look-up each.
    Creating and deleting a few inodes per container thus makes every later
    create slower: with the state directory (a directory and two files) on
    tmpfs instead, a start-to-removal loop took ~2 ms less here. A removed
    container's directory is renamed to ``.spare-<pid>-<n>`` in the same
    parent (its files kept, state.json rewritten in place to a "spare"
    record), and the next container of this process renames it to its own
    name with RENAME_NOREPLACE, so the name is claimed as atomically as by
    mkdir. No container name starts with "."; readers skip spare records;
    spares go at this process's exit, or with it (garbage collection: their
    creator is dead). At most two per state directory.
    """

    MAX = 2

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self._spares: dict[str, list[str]] = {}
        self._made = 0
        self._at_exit = False
        self._closed = False

    def _mine(self) -> bool:
        if self._owner != os.getpid():  # a forked copy of the caller: not its parent's spares
            self._owner, self._spares, self._at_exit, self._closed = os.getpid(), {}, False, False
        # (Closed: clear() ran at exit; containers removed by later exit
        # handlers are deleted at once.)
        return RECYCLE_STATE_DIRS and not self._closed

    def keep(self, path: Path) -> bool:
        """Make the removed container's directory ``path`` a spare; False
        when it is not taken (then the caller deletes it as usual)."""
        parent = str(path.parent)
        with self._lock:
            if not self._mine() or len(self._spares.get(parent, ())) >= self.MAX:
                return False
            try:
                if sorted(os.listdir(path)) != ["exit", "state.json"]:
                    return False  # a log (or anything else): not worth keeping
                rewrite_json(path / "state.json", {"status": _SPARE_STATUS, "creator_pid": os.getpid()})
                self._made += 1
                spare = f"{parent}/.spare-{os.getpid()}-{self._made}"
                os.rename(path, spare)
            except OSError:
                return False
            self._spares.setdefault(parent, []).append(spare)
            if not self._at_exit:
                self._at_exit = True
                import atexit

                atexit.register(self.clear)
        return True

    def reuse(self, container: Container) -> bool:
        """Give ``container`` a spare directory under its name, with its
        state written; False when there is none (nothing was done).

        Raises:
            AlreadyExists: the name is taken (the spare stays a spare).
        """
        path = container._state_path
        with self._lock:
            if not self._mine():
                return False
            spares = self._spares.get(str(path.parent))
            if not spares:
                return False
            spare = spares.pop()
        from pycontain.kernel import syscalls

        try:
            syscalls.rename_noreplace(spare, path)
        except OSError as e:
            if e.errno == errno.EEXIST:
                with self._lock:
                    self._spares.setdefault(str(path.parent), []).append(spare)
                raise _name_taken(container.name) from None
            _remove_spare(spare)  # gone (its state directory was removed meanwhile?) or unusable
            return False
        try:
            os.truncate(container._exit_path, 0)
            container._save(how="in_place")
        except BaseException:
            _remove_spare(str(path))
            raise
        return True

    def clear(self) -> None:
        """Delete every spare of this process, and keep none from now on (at its exit)."""
        with self._lock:
            if self._owner != os.getpid():
                return
            self._closed = True
            spares = [s for group in self._spares.values() for s in group]
            self._spares = {}
        for spare in spares:
            _remove_spare(spare)


#: The status a spare's state.json records (no container: readers skip it).
_SPARE_STATUS = "spare"


def _name_taken(name: str) -> AlreadyExists:
    return AlreadyExists("a container of that name exists", field="name", value=name,
                         hint="pick another name, or remove the old one: pycontain rm NAME")


def _remove_spare(path: str) -> None:
    from pycontain.backends.storage_driver import remove_dir

    with contextlib.suppress(OSError):
        remove_dir(path, _STATE_FILES)


_STATE_SPARES = _StateSpares()


def _fork_source() -> Any:
    """The zygote to fork a command's container from, or None to fork the caller."""
    if FORK_SOURCE == "caller":
        # What the child's setup (_ChildSetup.enter) imports, imported here:
        # in the child it would cost the start (~4 ms) and could hang on an
        # import lock another thread of the caller held at the fork.
        from pycontain.backends import capabilities, hardening, rootfs  # noqa: F401

        # A spare child made ahead by this process (the CLI server's worker),
        # if any: only possible once the zygote module is loaded (the
        # in-process CLI keeps it out of its imports).
        zygote_module = sys.modules.get("pycontain.engine.zygote")
        return zygote_module.local_spare() if zygote_module is not None else None
    from pycontain.engine import shared_zygote

    return shared_zygote(_ZYGOTE_PRELOAD, cleanup=ZYGOTE_CLEANUP)


def _check_userns_storage(config: ContainerConfig, image: Any) -> None:
    """userns= needs idmapped overlay layers: refuse other storage drivers up front."""
    from pycontain.backends import storage_driver

    driver = storage_driver.select_driver(image.store).name
    if driver != "overlay":
        raise InvalidArgument(f"userns needs the overlay storage driver; this store uses {driver}",
                              field="userns", value=config.userns.record() if config.userns else None,
                              hint="leave userns unset, or use a store where overlay is chosen "
                                   "(PYCONTAIN_STORE on a non-btrfs disk, PYCONTAIN_STORAGE_DRIVER=overlay)")


def _hold_until_eof(fd: int) -> None:
    """The user-namespace helper's workload: wait until the creator closes the pipe."""
    while os.read(fd, 1):
        pass


class _UserNamespaceHolder:
    """A helper process in a new user namespace with the container's id maps
    (written by the engine), which keeps it alive until the container's PID 1
    has joined it (its ``path``). Dies with its creator (pdeathsig); nothing
    of it is left on the host after :meth:`release`."""

    def __init__(self, ids: Any) -> None:
        from pycontain.engine import ChildSpec, start
        from pycontain.kernel import nsfs

        r, w = os.pipe()
        try:
            # Forked from the zygote when containers are: a fork of a big
            # caller (a notebook kernel with its data) would cost more.
            self._child: Child | None = start(ChildSpec(
                target=_hold_until_eof, args=(r,), new=frozenset({"user"}), uid_map=ids.uid_map,
                gid_map=ids.gid_map, pass_fds=(r,)), zygote=_fork_source())
        except BaseException:
            os.close(w)
            raise
        finally:
            os.close(r)
        self._w: int | None = w
        self.path = nsfs.proc_ns_path(self._child.pid, "user")

    def release(self) -> None:
        """End the helper (idempotent)."""
        if self._w is not None:
            os.close(self._w)
            self._w = None
        child, self._child = self._child, None
        if child is not None:
            try:
                child.wait(10)
            except BaseException:
                child.kill()
                child.wait()
                raise


@dataclass
class _ExecSetup:
    """What an exec'd process does after joining the container's namespaces."""

    confinement: Any
    userns: bool = False

    def enter(self) -> None:
        from pycontain.backends import hardening

        if self.userns:
            # Joined last, as PID 1 did: the container's other namespaces
            # belong to the host's user namespace, so joining them needs the
            # host's privilege. /proc is the container's now: 1 is its init.
            from pycontain.backends import userns
            from pycontain.kernel import nsfs

            fd = nsfs.open_namespace(nsfs.proc_ns_path(1, "user"))
            try:
                userns.enter_user_namespace(fd)
            finally:
                os.close(fd)
        hardening.confine(self.confinement)
        _verify_cwd()


def _verify_cwd() -> None:
    """Refuse a working directory outside the container's root.

    The chdir to the workdir happens before the engine closes the caller's
    descriptors, so a workdir of ``/proc/self/fd/N`` (from the options, or
    from a hostile image's WorkingDir, or a symlink in the image pointing
    there) would land on a directory of the host: runc's CVE-2024-21626.
    getcwd(2) names such a directory "(unreachable)", which glibc reports
    as ENOENT; runc's fix checks the same way.
    """
    try:
        cwd = os.getcwd()
    except OSError:
        cwd = "(unreachable)"
    if not cwd.startswith("/"):
        from pycontain.errors import PermissionDenied

        raise PermissionDenied("the working directory is outside the container's root", op="chdir",
                               field="workdir", value=cwd, errno=errno.EPERM,
                               hint="a workdir through /proc/self/fd leads to the host (CVE-2024-21626); "
                                    "use a path inside the image")


def _container_init(setup: _ChildSetup, argv: tuple[str, ...] | None,
                    target: tuple[Callable[..., Any], tuple[Any, ...]] | None, env: dict[str, str],
                    exit_fd: int) -> None:
    """PID 1 of the container: start the workload, reap everything, forward
    signals, and leave with the workload's status (also written to
    ``exit_fd``, the state directory's ``exit`` file, for other processes).
    Never returns."""
    from pycontain.engine.child import forward_signals, spawn_argv

    os.set_inheritable(exit_fd, False)
    # Started before the forwarding handlers exist: the workload keeps the
    # default dispositions the engine reset.
    if argv is not None:
        try:
            workload = spawn_argv(argv, env)
        except OSError as e:  # report like a shell does: 127 not found, 126 not executable
            import traceback

            with contextlib.suppress(OSError):
                os.write(2, f"pycontain: {''.join(traceback.format_exception_only(e)).strip()}\n".encode())
            with contextlib.suppress(OSError):
                os.write(exit_fd, b"%d\n" % (127 if e.errno == errno.ENOENT else 126))
            os._exit(127 if e.errno == errno.ENOENT else 126)
    else:
        assert target is not None
        # A Python workload that takes SIGINT itself (the notebook's cell
        # server: the stop button) starts with it ignored, not fatal: a press
        # that reaches the kernel's process group while the container starts
        # must not kill the server before it has set its handler.
        own_sigint = getattr(target[0], "handles_sigint", False) is True
        if own_sigint:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        workload = os.fork()
    if workload == 0:
        try:
            os.close(exit_fd)
            assert target is not None
            fn, args = target
            result = fn(*args)
            os._exit(result if isinstance(result, int) else 0)
        except BaseException as e:  # report like a shell does, then exit 127/126/1
            import traceback

            code = 1
            if isinstance(e, OSError) and e.errno == errno.ENOENT:
                code = 127
            elif isinstance(e, OSError) and e.errno == errno.EACCES:
                code = 126
            try:
                os.write(2, f"pycontain: {''.join(traceback.format_exception_only(e)).strip()}\n".encode())
            except OSError:
                pass
            os._exit(code)

    forward_signals(workload)
    # Don't hold the workload's stdio open: a reader waiting for EOF on the
    # workload's output must see it when the workload's side closes.
    with contextlib.suppress(OSError):
        fd = os.open("/dev/null", os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(fd, i)
        os.close(fd)
    status = 0
    while True:
        try:
            pid, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
        if pid == workload:
            status = os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st)
            break
    with contextlib.suppress(OSError):
        os.write(exit_fd, b"%d\n" % status)
    os._exit(status)


# -- root filesystem and network preparation (caller side) ------------------------------------------------


class _Rootfs:
    """The container's root: the image's layers through the store's storage
    driver (overlay, btrfs or copy), mounted by the child in its own mount
    namespace. The prepared directory outlives the container until remove(),
    so diff() and commit() work after exit."""

    @classmethod
    def reopen(cls, container_dir: Path) -> _Rootfs | None:
        """The rootfs a container made in another process (from its saved plan)."""
        from pycontain.backends import storage_driver
        from pycontain.image import Image

        try:
            plan = storage_driver.load_plan(str(container_dir))
        except PycontainError:
            return None
        self = cls.__new__(cls)
        self.plan = plan
        self.image = Image.get(plan.image)
        self.driver = storage_driver.select_driver(self.image.store, plan.driver)
        self.target = str(container_dir)
        nsfile = state_dir() / "storage" / plan.owner
        if (container_dir / "sized").is_dir() and nsfile.exists():
            self.sized = _SizedLayer(plan, 0, str(nsfile), str(container_dir / "sized"))
        return self

    sized: _SizedLayer | None = None

    def __init__(self, image: Any, container_dir: Path, owner: str, size: int | None = None) -> None:
        from pycontain.backends import storage_driver

        self.image = image
        self.driver = storage_driver.select_driver(image.store)
        layers = [layer.record for layer in image.layers]
        if not getattr(image, "based_on_host", False):
            # (The host's root has these already; and overlayfs refuses a
            # lower layer that lies inside another one, as the store lies inside /.)
            layers.append(_init_layer(image.store).record)
        self.plan = self.driver.prepare(layers, str(container_dir), image=image.digest, owner=owner)
        # The root is mounted over the container's directory itself, in the
        # child's private mount namespace: the mount holds upper/ and work/
        # (resolved at mount time), nobody else sees it there, and no
        # mount-point directory is made and removed per container (each
        # create costs 0.1-1 ms on this host's ext4).
        self.target = str(container_dir)
        if size is not None:
            try:
                self.sized = _SizedLayer.create(self.plan, size, str(state_dir() / "storage" / owner))
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        if self.sized is not None:
            self.sized.release()
        self.driver.cleanup(self.plan)
        if os.path.lexists(self.plan.container_dir):  # a driver that left it (never the built-in ones)
            shutil.rmtree(self.plan.container_dir, ignore_errors=True)


class _SizedLayer:
    """A writable layer of at most ``size`` bytes (``Container(storage_size=)``).

    The overlay's upper and work directories live on a tmpfs of that size.
    The tmpfs is mounted in a mount namespace of its own that outlives the
    container until remove(), kept by a namespace file under the state
    directory (as network namespaces are): the container starts from a copy
    of that namespace, so the tmpfs is there below its overlay and nowhere
    on the host; diff(), commit() and usage() look at it from a helper
    process that joins the namespace, also after the container exited.

    Why tmpfs: this host has no XFS project quotas, and an ext4 image on a
    loop device per container is heavy (mkfs, a loop device to leak). The
    price: the layer is memory (charged to the container's memory cgroup,
    as the kernel charges tmpfs pages to whoever writes them), and only the
    overlay driver can use it.
    """

    def __init__(self, plan: Any, size: int, nsfile: str, directory: str) -> None:
        self.size = size
        self.nsfile = nsfile
        self.directory = directory
        upper, work = os.path.join(directory, "upper"), os.path.join(directory, "work")
        self.plan = _replace_upper(plan, upper, work)

    @classmethod
    def create(cls, plan: Any, size: int, nsfile: str) -> _SizedLayer:
        from pycontain.engine import ChildSpec, start
        from pycontain.errors import Unsupported
        from pycontain.kernel import nsfs

        if plan.driver != "overlay":
            raise Unsupported(f"storage_size needs the overlay storage driver, not {plan.driver}",
                              field="storage_size", hint="leave storage_size unset with this store")
        directory = os.path.join(plan.container_dir, "sized")
        os.mkdir(directory, 0o700)
        ensure_dir(Path(nsfile).parent)
        try:
            start(ChildSpec(target=_mount_sized, args=(directory, size), new=frozenset({"mnt"}),
                            persist={"mnt": nsfile})).result(timeout=30)
        except BaseException:
            nsfs.unbind_namespace(nsfile)
            raise
        return cls(plan, size, nsfile, directory)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a child inside the layer's mount namespace; its result."""
        from pycontain.engine import ChildSpec, start

        return start(ChildSpec(target=fn, args=args, join=(("mnt", self.nsfile),))).result(timeout=300)

    def usage(self) -> dict[str, Any]:
        """``storage_bytes``, ``storage_limit_bytes`` and ``storage_full`` (fewer than 64 KiB left)."""
        try:
            st = self.run(os.statvfs, self.directory)
        except PycontainError:
            return {}
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        return {"storage_bytes": used, "storage_limit_bytes": st.f_blocks * st.f_frsize,
                "storage_full": st.f_bavail * st.f_frsize < 64 * 1024}

    def release(self) -> None:
        from pycontain.kernel import nsfs

        nsfs.unbind_namespace(self.nsfile)


def _mount_sized(directory: str, size: int) -> None:
    """In a fresh mount namespace: the size-limited tmpfs for a writable layer."""
    from pycontain.kernel import constants as C
    from pycontain.kernel import syscalls

    # Private first: a mount in a copy of a shared / would propagate to the host.
    syscalls.mount(None, "/", None, C.MS_REC | C.MS_PRIVATE, None)
    syscalls.mount("pycontain-layer", directory, "tmpfs", C.MS_NOSUID | C.MS_NODEV, f"size={size},mode=0755")
    os.mkdir(os.path.join(directory, "upper"), 0o755)
    os.mkdir(os.path.join(directory, "work"), 0o700)


def _replace_upper(plan: Any, upper: str, work: str) -> Any:
    """``plan`` with the overlay's upperdir/workdir (and ``rootfs``) moved."""
    import dataclasses

    from pycontain.backends.storage_overlay import _escape

    old_upper, old_work = os.path.join(plan.container_dir, "upper"), os.path.join(plan.container_dir, "work")
    steps = []
    for step in plan.mounts:
        data = step.data
        if step.fstype == "overlay" and data and f"upperdir={_escape(old_upper)}," in data:
            data = data.replace(f"upperdir={_escape(old_upper)},", f"upperdir={_escape(upper)},")
            data = data.replace(f"workdir={_escape(old_work)},", f"workdir={_escape(work)},")
        steps.append(dataclasses.replace(step, data=data))
    return dataclasses.replace(plan, rootfs=upper, mounts=steps)


def _commit_into(driver: Any, plan: Any, path: str) -> None:
    with open(path, "r+b") as f:
        driver.commit(plan, f)


_INIT_LAYERS: dict[str, Any] = {}
#: What the container's setup mounts over: created in an "init" layer between
#: the image and the writable layer (as Docker does), so they never show up in
#: diff() or commit().
_INIT_DIRS = ("proc", "sys", "dev", "etc")
_INIT_FILES = ("etc/hosts",)


def _init_layer(store: Any) -> Any:
    layer = _INIT_LAYERS.get(store.root)
    if layer is None:
        layer = _INIT_LAYERS[store.root] = _known_init_layer(store) or _make_init_layer(store)
    return layer


def _known_init_layer(store: Any) -> Any:
    """The init layer an earlier process made in ``store`` (its digest kept in
    the store's ``init-layer`` file), or None: a new process (a CLI run) then
    skips writing and hashing the tar again (~10 ms)."""
    from pycontain.errors import PycontainError
    from pycontain.image import Layer

    try:
        with open(os.path.join(store.root, "init-layer"), encoding="utf-8") as f:
            what, _, digest = f.read().strip().rpartition("\n")
        if what != repr((_INIT_DIRS, _INIT_FILES)):
            return None  # made for other contents
        return Layer.get(digest, store=store)
    except (OSError, ValueError, PycontainError):  # missing, unreadable, pruned
        return None


def _make_init_layer(store: Any) -> Any:
    import tempfile

    from pycontain.image import Layer

    with tempfile.TemporaryDirectory() as d:
        for name in _INIT_DIRS:
            os.mkdir(os.path.join(d, name))
            os.chmod(os.path.join(d, name), 0o755)
        for name in _INIT_FILES:
            with open(os.path.join(d, name), "w"):
                pass
            os.chmod(os.path.join(d, name), 0o644)
        os.chmod(d, 0o755)
        layer = Layer.from_dir(d, store=store)
    tmp = os.path.join(store.root, f".init-layer.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{(_INIT_DIRS, _INIT_FILES)!r}\n{layer.digest}\n")
        os.replace(tmp, os.path.join(store.root, "init-layer"))
    except OSError:  # only a later process's shortcut is lost
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return layer


def _image_of(config: ContainerConfig) -> Any:
    """The :class:`~pycontain.Image` a config names ("host", a tag, or an Image)."""
    from pycontain.image import Image

    image = config.image
    if isinstance(image, str):
        if image == "host":
            return _host_image()
        return Image.get(image)
    return image


_HOST_IMAGE: dict[str, Any] = {}


def _host_image() -> Any:
    """Image.from_host(), made once per store per process (it writes the store)."""
    from pycontain.image import Image

    key = str(store_dir())
    img = _HOST_IMAGE.get(key)
    if img is None:
        img = _HOST_IMAGE[key] = Image.from_host()
    return img


def _prepare_rootfs(config: ContainerConfig, image: Any, base: Path, owner: str) -> Any:
    ensure_dir(base.parent)
    if base.exists():
        shutil.rmtree(base)
    return _Rootfs(image, base, owner, size=config.storage_size)


class _NoNetwork:
    """network="none"/"host": nothing to prepare outside the container."""

    netns_path: str | None = None

    def hosts_file(self, hostname: str) -> str | None:
        return f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"

    def release(self) -> None:
        pass


def _prepare_network(container: Container) -> Any:
    net = container.config.network
    if net in ("none", "host"):
        return _NoNetwork()
    from pycontain.network import prepare_endpoint

    return prepare_endpoint(container, net)


# -- listing -------------------------------------------------------------------------------------------


def _iter_states() -> Iterator[dict[str, Any]]:
    root = containers_dir()
    if not root.is_dir():
        return
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue  # a spare (_StateSpares): no container
        try:
            state = _read_state(entry)
        except (OSError, ValueError):
            continue
        if state is not None:
            yield _refresh(state)


def _read_state(directory: Path) -> dict[str, Any] | None:
    """The state recorded in a container's directory; None when there is
    none, or it is a spare's (_StateSpares) being renamed to that name and
    not yet written. Raises ValueError for a record that does not parse."""
    try:
        state = dict(read_json(directory / "state.json"))
    except FileNotFoundError:
        return None
    return None if state.get("status") == _SPARE_STATUS else state


def containers(all: bool = True) -> pd.DataFrame:
    """The containers in the state directory, seen from any process.

    Columns: ``name``, ``status`` (as recorded, "exited" when its PID 1 is
    gone), ``exit_code`` (once exited), ``pid``, ``image``, ``command``, ``created``, ``creator_pid``,
    ``orphan`` (its creator died and it was not detached), ``memory``,
    ``cpus``, ``userns`` (its uid map, lines joined by "; ", or None). With
    ``all=False`` only running and paused ones.
    """
    import pandas as pd

    df = pd.DataFrame(container_records(all), columns=_CONTAINER_COLUMNS)
    df["created"] = pd.to_datetime(df["created"], unit="s")
    return df


_CONTAINER_COLUMNS = ["name", "status", "exit_code", "pid", "image", "command", "created", "creator_pid", "orphan",
                      "memory", "cpus", "userns"]


def container_records(all: bool = True) -> list[dict[str, Any]]:
    """What :func:`containers` lists, as plain dicts (``created``: Unix
    time): for the command line, which need not import pandas."""
    rows = []
    for st in _iter_states():
        status = st.get("status")  # brought up to date by _refresh (the exit file, PID 1's liveness)
        orphan = not st.get("detach") and not alive(st.get("creator_pid"))
        if not all and status not in ("running", "paused"):
            continue
        rows.append({
            "name": st.get("name"), "status": status,
            "exit_code": st.get("exit_code") if status == "exited" else None,
            "pid": st.get("pid"), "image": st.get("image"),
            "command": " ".join(st.get("command") or []), "created": st.get("created"),
            "creator_pid": st.get("creator_pid"), "orphan": orphan, "memory": st.get("memory"),
            "cpus": st.get("cpus"), "userns": _userns_summary(st.get("userns")),
        })
    return rows


def _userns_summary(record: Any) -> str | None:
    if not isinstance(record, dict) or not record.get("uid_map"):
        return None
    return "; ".join(str(record["uid_map"]).strip().splitlines())


def cleanup_orphans() -> list[str]:
    """Remove what crashed creators left behind: containers whose creator died
    (and that were not detached), with their cgroups (killing what is left
    inside), writable layers and network namespaces. Returns their names.
    See :func:`pycontain.container_gc.collect` for the full report."""
    from pycontain.container_gc import collect

    return collect().containers


# -- one shot -------------------------------------------------------------------------------------------


def run(argv: Any, image: Any = "host", *, timeout: float | None = None,
        on_stdout: Callable[[str], None] | None = None, on_stderr: Callable[[str], None] | None = None,
        sample_interval: float = 0.1, **options: Any) -> RunResult:
    """Run ``argv`` in a new container, wait, remove it, and return the result.

    ``stdout`` and ``stderr`` are captured separately; ``on_stdout`` /
    ``on_stderr`` get the text as it comes (live). ``options`` are
    :class:`Container` keywords (``memory``, ``cpus``, ``network``, ...).
    ``oom_killed`` is True (and ``returncode`` 137) when the OOM killer
    struck; ``stats`` is a DataFrame of usage sampled every
    ``sample_interval`` s.

    Raises:
        InvalidArgument: bad options (nothing is created).
        Timeout: still running after ``timeout`` s (the container is removed).

    Example::

        r = pycontain.run(["sh", "-c", "echo hi"], memory="64M")
        assert r.returncode == 0 and r.stdout == "hi\\n"
    """
    if options.get("detach"):
        raise InvalidArgument("run() waits for the container; use Container(detach=True).start()",
                              field="detach", value=True)
    c = Container(image=image, command=argv, **options)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    t0 = time.monotonic()
    readers: list[threading.Thread] = []
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    try:
        devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            c.start(stdin=devnull, stdout=out_w, stderr=err_w)
        finally:
            os.close(devnull)
            os.close(out_w)
            os.close(err_w)
        mon = c.monitor(sample_interval)
        for fd, cb in ((out_r, on_stdout), (err_r, on_stderr)):
            t = threading.Thread(target=_pump, args=(fd, chunks[fd], cb), daemon=True)
            t.start()
            readers.append(t)
        try:
            code = c.wait(timeout)
        except Timeout:
            c.kill()
            c.wait()
            raise
        finally:
            for t in readers:
                t.join(5)
            mon.stop()
        usage = c.usage()
        oom = bool(usage.get("oom_killed"))
        return RunResult(
            returncode=code, stdout=b"".join(chunks[out_r]).decode(errors="replace"),
            stderr=b"".join(chunks[err_r]).decode(errors="replace"), oom_killed=oom, stats=mon.frame,
            name=c.name, wall_s=time.monotonic() - t0, usage=usage,
        )
    finally:
        c.remove(force=True)
        for fd in (out_r, err_r):
            with contextlib.suppress(OSError):
                os.close(fd)


def _pump(fd: int, sink: list[bytes], callback: Callable[[str], None] | None) -> None:
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            return
        if not data:
            if callback is not None:
                tail = decoder.decode(b"", final=True)
                if tail:
                    callback(tail)
            return
        sink.append(data)
        if callback is not None:
            callback(decoder.decode(data))


def get(name: str) -> dict[str, Any]:
    """The recorded state of container ``name`` (any process's).

    Raises:
        NotFound: no such container.
    """
    validate_name(name)
    state = _read_state(containers_dir() / name)
    if state is None:
        raise NotFound("no such container", field="name", value=name, hint="pycontain ps -a lists them")
    return _refresh(state)


def _refresh(state: dict[str, Any]) -> dict[str, Any]:
    """A recorded state brought up to date: a status in the ``exit`` file
    (PID 1 writes it as it leaves) or a PID 1 that is gone means exited."""
    if state.get("status") in ("running", "paused"):
        code = _exit_file_status(containers_dir() / str(state.get("name")) / "exit")
        if code is not None or not alive(state.get("pid")):
            state["status"] = "exited"
            if state.get("exit_code") is None:
                state["exit_code"] = EXIT_SIGKILL if code is None else code  # no word from init: it was killed
    return state


def _exit_file_status(path: Path) -> int | None:
    """The status PID 1 wrote to its ``exit`` file, or None (not yet, or never: killed)."""
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_bytes().strip())
    return None
