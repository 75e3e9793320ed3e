"""What a container is asked to be, checked strictly before anything runs.

:class:`ContainerConfig` holds the validated, normalized form of the keyword
arguments of :class:`pycontain.Container` and ``pycontain run``. Every check
here raises :class:`~pycontain.errors.InvalidArgument` naming the field and
the value, before any cgroup, mount, veth or state file exists.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal as _signal
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pycontain import units
from pycontain.errors import InvalidArgument
from pycontain.kernel.constants import CAP_NUMBERS
from pycontain.statedir import validate_name

#: Mount destinations a volume may never cover: the kernel interfaces the
#: container's own setup mounts. Covering them would undo the masked paths.
FORBIDDEN_DESTINATIONS = ("/proc", "/sys", "/dev")

_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_USERNAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


@dataclass(frozen=True)
class Volume:
    """A bind mount: host ``source`` at ``destination`` inside, read-only or not."""

    source: str
    destination: str
    read_only: bool = False


#: ``userns=True`` (or "auto"): the container's ids 0..65535 are host ids
#: 100000..165535, for uids and gids (podman's and Docker's usual range).
DEFAULT_USERNS_MAP = "0 100000 65536"
_ID_MAP_MAX_LINES = 340  # user_namespaces(7), since Linux 4.15
_ID_LIMIT = 0xFFFFFFFF  # (uid_t)-1 is no id; a range must end below it


@dataclass(frozen=True)
class UsernsMap:
    """The id maps of a container's user namespace: "inside outside count" lines."""

    uid_map: str
    gid_map: str

    @property
    def root_uid(self) -> int:
        """The host uid of the container's root."""
        return _outside_of_zero(self.uid_map)

    @property
    def root_gid(self) -> int:
        """The host gid of the container's root group."""
        return _outside_of_zero(self.gid_map)

    def record(self) -> dict[str, str]:
        """JSON form, accepted back by :func:`parse_userns`."""
        return {"uid_map": self.uid_map, "gid_map": self.gid_map}


def _outside_of_zero(text: str) -> int:
    for line in text.splitlines():
        inside, outside, _count = (int(x) for x in line.split())
        if inside == 0:
            return outside
    raise AssertionError("validated maps map id 0")  # pragma: no cover


def _parse_id_map(value: Any, fieldname: str) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise InvalidArgument("an id map is a string of 'inside outside count' lines", field=fieldname,
                              value=value, hint=f'e.g. "{DEFAULT_USERNS_MAP}"')
    lines = [ln.split() for ln in re.split(r"[\n;]", value) if ln.strip()]
    if not lines or len(lines) > _ID_MAP_MAX_LINES:
        raise InvalidArgument(f"an id map has 1 to {_ID_MAP_MAX_LINES} lines", field=fieldname, value=value)
    ranges = []
    for parts in lines:
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts):
            raise InvalidArgument("each id map line is 'inside outside count' (three numbers)", field=fieldname,
                                  value=value, hint=f'e.g. "{DEFAULT_USERNS_MAP}"')
        inside, outside, count = (int(p) for p in parts)
        if count == 0 or inside + count > _ID_LIMIT or outside + count > _ID_LIMIT:
            raise InvalidArgument("an id map range is empty or runs past the last id (4294967294)",
                                  field=fieldname, value=value)
        ranges.append((inside, outside, count))
    for side, what in ((0, "inside"), (1, "outside")):
        spans = sorted((r[side], r[side] + r[2]) for r in ranges)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            if start < end:
                raise InvalidArgument(f"id map ranges overlap on the {what}", field=fieldname, value=value)
    if not any(inside == 0 for inside, _, _ in ranges):
        raise InvalidArgument("the id map must map the container's root (inside id 0)", field=fieldname,
                              value=value, hint=f'e.g. "{DEFAULT_USERNS_MAP}"')
    if any(outside == 0 for _, outside, _ in ranges):
        raise InvalidArgument("the id map must not reach the host's root (outside id 0)", field=fieldname,
                              value=value, hint="map to an unused range of host ids, e.g. "
                              f'"{DEFAULT_USERNS_MAP}"; for the host\'s root, leave userns unset')
    return "".join(f"{i} {o} {c}\n" for i, o, c in ranges)


def parse_userns(value: Any) -> UsernsMap | None:
    """The ``userns`` option: None/False (off, the default), True or "auto"
    (:data:`DEFAULT_USERNS_MAP` for uids and gids), a map string ("inside
    outside count", lines split by newlines or ';') for both, or separate maps
    as ``{"uid_map": ..., "gid_map": ...}`` or a pair ``(uid_map, gid_map)``.

    Raises:
        InvalidArgument: a malformed map, overlapping ranges, a map without
            the container's root (inside 0) or one that reaches host id 0.

    >>> parse_userns(True).root_uid
    100000
    """
    if value is None or value is False:
        return None
    if value is True or value == "auto":
        value = DEFAULT_USERNS_MAP
    if isinstance(value, UsernsMap):
        return value
    if isinstance(value, str):
        text = _parse_id_map(value, "userns")
        return UsernsMap(text, text)
    if isinstance(value, Mapping):
        if set(value) != {"uid_map", "gid_map"}:
            raise InvalidArgument("userns as a dict has exactly the keys uid_map and gid_map", field="userns",
                                  value=value)
        return UsernsMap(_parse_id_map(value["uid_map"], "userns.uid_map"),
                         _parse_id_map(value["gid_map"], "userns.gid_map"))
    if isinstance(value, tuple | list) and len(value) == 2:
        return UsernsMap(_parse_id_map(value[0], "userns.uid_map"), _parse_id_map(value[1], "userns.gid_map"))
    raise InvalidArgument("userns must be None, True, 'auto', an id map string or {uid_map, gid_map}",
                          field="userns", value=value, hint=f'e.g. userns=True or userns="{DEFAULT_USERNS_MAP}"')


@dataclass(frozen=True)
class ContainerConfig:
    """The validated configuration of one container (see :class:`pycontain.Container`)."""

    image: Any = "host"
    command: tuple[str, ...] | None = None
    name: str = ""
    memory: int | None = None
    cpus: float | None = None
    pids: int | None = None
    cpuset: frozenset[int] | None = None
    network: Any = "none"
    hostname: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    volumes: tuple[Volume, ...] = ()
    workdir: str | None = None
    user: str | None = None
    read_only: bool = False
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    seccomp: str = "default"
    detach: bool = False
    ports: dict[int, int] = field(default_factory=dict)
    bandwidth: int | None = None  # bits per second, both directions
    storage_size: int | None = None  # bytes the writable layer may hold (None: the store's disk)
    userns: UsernsMap | None = None  # None: no user namespace (the container's root is the host's)


def make_config(
    image: Any = "host",
    command: Any = None,
    name: Any = None,
    memory: Any = None,
    cpus: Any = None,
    pids: Any = None,
    cpuset: Any = None,
    network: Any = "none",
    hostname: Any = None,
    env: Any = None,
    volumes: Any = None,
    workdir: Any = None,
    user: Any = None,
    read_only: Any = False,
    cap_add: Any = (),
    cap_drop: Any = (),
    seccomp: Any = "default",
    detach: Any = False,
    ports: Any = None,
    bandwidth: Any = None,
    storage_size: Any = None,
    userns: Any = None,
) -> ContainerConfig:
    """Validate and normalize container options.

    Raises:
        InvalidArgument: for any bad value, naming the field.

    >>> make_config(command=["echo", "hi"], memory="64M").memory
    67108864
    """
    return ContainerConfig(
        image=_image(image),
        command=parse_command(command) if command is not None else None,
        name=validate_name(name) if name is not None else "pc-" + os.urandom(6).hex(),
        memory=units.parse_size(memory, "memory", minimum=1 << 20) if memory is not None else None,
        cpus=units.parse_cpus(cpus, "cpus") if cpus is not None else None,
        pids=units.parse_int(pids, "pids", minimum=1) if pids is not None else None,
        cpuset=units.parse_cpuset(cpuset, "cpuset", available=_online_cpus()) if cpuset is not None else None,
        network=_network(network),
        hostname=_hostname(hostname) if hostname is not None else None,
        env=parse_env(env),
        volumes=parse_volumes(volumes),
        workdir=_abs_path(workdir, "workdir") if workdir is not None else None,
        user=_user(user) if user is not None else None,
        read_only=_bool(read_only, "read_only"),
        cap_add=_caps(cap_add, "cap_add"),
        cap_drop=_caps(cap_drop, "cap_drop"),
        seccomp=_seccomp(seccomp),
        detach=_bool(detach, "detach"),
        ports=parse_ports(ports),
        bandwidth=_bandwidth(bandwidth, network) if bandwidth is not None else None,
        storage_size=units.parse_size(storage_size, "storage_size", minimum=1 << 20)
        if storage_size is not None else None,
        userns=parse_userns(userns),
    )


def _bandwidth(value: Any, network: Any) -> int:
    from pycontain.network import parse_rate

    if network in ("none", "host"):
        raise InvalidArgument(
            "a bandwidth limit needs a network", field="bandwidth", value=value,
            hint="use network='bridge' or a Network; 'none' has no traffic to shape, 'host' is the host's",
        )
    return parse_rate(value, "bandwidth")


def _online_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def _bool(value: Any, fieldname: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{fieldname} must be True or False", field=fieldname, value=value)
    return value


def _image(value: Any) -> Any:
    if isinstance(value, str):
        if not value or "\0" in value:
            raise InvalidArgument("image must be a tag, 'host' or an Image", field="image", value=value)
        return value
    if hasattr(value, "layers"):
        return value
    raise InvalidArgument(
        "image must be a tag, 'host' or an Image",
        field="image",
        value=value,
        hint="e.g. image='host' (the host's root, copy-on-write) or an Image from Image.load()",
    )


def parse_command(value: Any, fieldname: str = "command") -> tuple[str, ...]:
    """argv from a list of strings, or a string split like a shell would."""
    if isinstance(value, str):
        import shlex

        try:
            argv = shlex.split(value)
        except ValueError as e:
            raise InvalidArgument(f"{fieldname}: {e}", field=fieldname, value=value) from None
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        argv = list(value)
    else:
        raise InvalidArgument(f"{fieldname} must be a list of strings", field=fieldname, value=value)
    if not argv:
        raise InvalidArgument(f"{fieldname} is empty", field=fieldname, value=value, hint="give a program to run")
    for arg in argv:
        if not isinstance(arg, str):
            raise InvalidArgument(f"{fieldname}: arguments must be strings", field=fieldname, value=arg)
        if "\0" in arg:
            raise InvalidArgument(f"{fieldname}: an argument contains a NUL byte", field=fieldname, value=arg)
    if not argv[0]:
        raise InvalidArgument(f"{fieldname}: the program name is empty", field=fieldname, value=value)
    return tuple(argv)


def parse_env(value: Any) -> dict[str, str]:
    """Environment from a mapping or ``["KEY=value", ...]``; keys without '=' or NUL."""
    if value is None:
        return {}
    items: Iterable[tuple[Any, Any]]
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        pairs = []
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise InvalidArgument("env entries must look like KEY=value", field="env", value=entry)
            key, _, val = entry.partition("=")
            pairs.append((key, val))
        items = pairs
    else:
        raise InvalidArgument("env must be a dict or a list of KEY=value", field="env", value=value)
    env: dict[str, str] = {}
    for key, val in items:
        if not isinstance(key, str) or not key:
            raise InvalidArgument("env key must be a non-empty string", field="env", value=key)
        if "=" in key or "\0" in key:
            raise InvalidArgument("env key must not contain '=' or NUL", field="env", value=key)
        if not isinstance(val, str):
            raise InvalidArgument(f"env value of {key} must be a string", field=f"env[{key}]", value=val)
        if "\0" in val:
            raise InvalidArgument(f"env value of {key} contains a NUL byte", field=f"env[{key}]", value=val)
        env[key] = val
    return env


def _check_mount_path(path: Any, fieldname: str) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"{fieldname} must be a non-empty path", field=fieldname, value=path)
    if "\0" in path:
        raise InvalidArgument(f"{fieldname} contains a NUL byte", field=fieldname, value=path)
    # A comma or colon would smuggle options into a mount option string
    # (overlay lowerdir=..., or the src:dst:mode volume syntax).
    if "," in path or ":" in path:
        raise InvalidArgument(
            f"{fieldname} must not contain ',' or ':'",
            field=fieldname,
            value=path,
            hint="these characters could inject mount options; rename the path",
        )
    return path


def _abs_path(path: Any, fieldname: str) -> str:
    _check_mount_path(path, fieldname)
    if not path.startswith("/"):
        raise InvalidArgument(f"{fieldname} must be an absolute path", field=fieldname, value=path)
    return posixpath.normpath(path)


def _destination(path: Any) -> str:
    dest = _abs_path(path, "volumes.destination")
    if dest == "/" or any(dest == d or dest.startswith(d + "/") for d in FORBIDDEN_DESTINATIONS):
        raise InvalidArgument(
            "volume destination is not allowed",
            field="volumes.destination",
            value=path,
            hint="/, /proc, /sys and /dev are set up by pycontain itself; mount elsewhere",
        )
    return dest


def parse_volumes(value: Any) -> tuple[Volume, ...]:
    """Volumes from ``{src: dst}``, ``{src: {"bind": dst, "mode": "ro"}}`` or
    ``["src:dst[:ro|rw]", ...]``. Sources must exist; destinations are
    absolute and never /, /proc, /sys or /dev."""
    if value is None:
        return ()
    raw: list[tuple[Any, Any, Any]] = []
    if isinstance(value, Mapping):
        for src, spec in value.items():
            if isinstance(spec, Mapping):
                raw.append((src, spec.get("bind"), spec.get("mode", "rw")))
            else:
                raw.append((src, spec, "rw"))
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for entry in value:
            if isinstance(entry, Volume):
                raw.append((entry.source, entry.destination, "ro" if entry.read_only else "rw"))
                continue
            if not isinstance(entry, str):
                raise InvalidArgument("volume must be 'src:dst[:ro]'", field="volumes", value=entry)
            parts = entry.split(":")
            if len(parts) not in (2, 3):
                raise InvalidArgument("volume must be 'src:dst[:ro]'", field="volumes", value=entry)
            raw.append((parts[0], parts[1], parts[2] if len(parts) == 3 else "rw"))
    else:
        raise InvalidArgument("volumes must be a dict or a list", field="volumes", value=value)
    out = []
    seen = set()
    for src, dst, mode in raw:
        source = _abs_path(src, "volumes.source")
        if not os.path.exists(source):
            raise InvalidArgument("volume source does not exist", field="volumes.source", value=src)
        dest = _destination(dst)
        if mode not in ("ro", "rw"):
            raise InvalidArgument("volume mode must be 'ro' or 'rw'", field="volumes.mode", value=mode)
        if dest in seen:
            raise InvalidArgument("two volumes share a destination", field="volumes.destination", value=dst)
        seen.add(dest)
        out.append(Volume(source, dest, mode == "ro"))
    return tuple(out)


def _network(value: Any) -> Any:
    if isinstance(value, str):
        if value in ("none", "host", "bridge"):
            return value
        return validate_name(value, "network")
    if hasattr(value, "attach"):
        return value
    raise InvalidArgument(
        "network must be 'none', 'host', 'bridge', a network name or a Network",
        field="network",
        value=value,
    )


def _hostname(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64 or not _HOSTNAME_RE.fullmatch(value):
        raise InvalidArgument(
            "invalid hostname",
            field="hostname",
            value=value,
            hint="letters, digits and '-' in dot-separated labels, at most 64 characters (RFC 1123)",
        )
    return value


def _user(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidArgument("user must be 'uid[:gid]' or a user name", field="user", value=value)
    user, _, group = value.partition(":")
    for part, what in ((user, "user"), (group, "group")):
        if part == "" and what == "group" and ":" not in value:
            continue
        if part.isdigit():
            if int(part) > 2**32 - 2:
                raise InvalidArgument(f"{what} id out of range", field="user", value=value)
        elif not _USERNAME_RE.fullmatch(part):
            raise InvalidArgument("user must be 'uid[:gid]' or a user name", field="user", value=value)
    return value


def _caps(value: Any, fieldname: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable):
        raise InvalidArgument(f"{fieldname} must be a list of capability names", field=fieldname, value=value)
    out = []
    for name in value:
        if not isinstance(name, str):
            raise InvalidArgument("capability must be a string", field=fieldname, value=name)
        key = name.upper()
        if key == "ALL":
            out.append("ALL")
            continue
        if not key.startswith("CAP_"):
            key = "CAP_" + key
        if key not in CAP_NUMBERS:
            raise InvalidArgument(
                "unknown capability", field=fieldname, value=name, hint="names as in capabilities(7), e.g. NET_ADMIN"
            )
        out.append(key)
    return tuple(out)


def _seccomp(value: Any) -> str:
    if value in ("default", "unconfined"):
        return str(value)
    if isinstance(value, str | os.PathLike):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise InvalidArgument(
                "seccomp profile not found",
                field="seccomp",
                value=value,
                hint="'default', 'unconfined' or the path to a Docker-format JSON profile",
            )
        return str(path)
    raise InvalidArgument("seccomp must be 'default', 'unconfined' or a path", field="seccomp", value=value)


def parse_ports(value: Any) -> dict[int, int]:
    """``{host_port: container_port}``, both in 1..65535."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument("ports must be a dict {host_port: container_port}", field="ports", value=value)
    out = {}
    for host, inside in value.items():
        h = units.parse_int(host, "ports.host", minimum=1, maximum=65535)
        c = units.parse_int(inside, "ports.container", minimum=1, maximum=65535)
        out[h] = c
    return out


def parse_signal(value: Any) -> int:
    """A signal from an int, ``signal.SIGTERM``, ``"SIGTERM"`` or ``"TERM"``."""
    if isinstance(value, _signal.Signals):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _signal.valid_signals():
            return value
    elif isinstance(value, str):
        key = value.upper()
        if not key.startswith("SIG"):
            key = "SIG" + key
        if key in _signal.Signals.__members__:
            return int(_signal.Signals[key])
        if value.isdigit() and int(value) in _signal.valid_signals():
            return int(value)
    raise InvalidArgument("unknown signal", field="signal", value=value, hint="e.g. 'SIGTERM', 'KILL' or 9")
