"""The one vocabulary of cgroup limits, shared by the v1 and v2 backends.

Users speak in one set of words (``memory``, ``cpus``, ``cpu_weight``,
``io_max`` ...) whatever cgroup version the host runs. :func:`parse_limits`
checks every value strictly (pycontain.units) and returns a :class:`Limits`
with plain numbers; the backends translate those numbers into their own
files. Nothing here touches the kernel except ``os.stat`` of device nodes a
user names by path (through pycontain.kernel.cgroupfs).

Conventions of :class:`Limits`: ``None`` means "not given" (no limit when
creating, "leave as is" when updating) and :data:`UNLIMITED` (-1) means
"remove the limit" (the user wrote ``"max"``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from pycontain.errors import InvalidArgument
from pycontain.kernel import cgroupfs
from pycontain.units import parse_cpus, parse_cpuset, parse_int, parse_size, parse_weight

UNLIMITED = -1

#: Default CFS period: 100 ms, the kernel's and Docker's default.
DEFAULT_CPU_PERIOD_US = 100_000

NAME_MAX = 200
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@:+-]*\Z")
# Names that look like control files ("cgroup.procs", "tasks") are refused.
_CONTROL_FILE_RE = re.compile(
    r"(cgroup|memory|cpu|cpuset|cpuacct|io|pids|hugetlb|blkio|devices|freezer|net_cls|net_prio|rdma|misc)\."
    r"|(tasks|notify_on_release|release_agent)\Z"
)


def validate_name(name: Any, field_name: str = "name") -> str:
    """A cgroup name: one path component, no ``/``, ``..``, NUL, not empty, at most 200 bytes."""
    hint = "a cgroup name is one word of letters, digits and _ . @ : + - (no '/'), like 'job-1'"
    if not isinstance(name, str):
        raise InvalidArgument(f"{field_name}: must be a string", field=field_name, value=name, hint=hint)
    if not name:
        raise InvalidArgument(f"{field_name}: empty", field=field_name, value=name, hint=hint)
    if "\0" in name or "/" in name or name in (".", "..") or ".." in name:
        raise InvalidArgument(f"{field_name}: not a single safe path component", field=field_name,
                              value=name, hint=hint)
    if len(name.encode()) > NAME_MAX:
        raise InvalidArgument(f"{field_name}: longer than {NAME_MAX} bytes", field=field_name,
                              value=name, hint=hint)
    if not _NAME_RE.match(name) or _CONTROL_FILE_RE.match(name):
        # Names like "cgroup.procs" would clash with the control files of the parent.
        raise InvalidArgument(f"{field_name}: not allowed", field=field_name, value=name, hint=hint)
    return name


def validate_parent(parent: Any) -> str:
    """The parent path below each hierarchy root, like ``"pycontain"`` or ``"pycontain/team"``."""
    hint = "a relative path of cgroup names below the hierarchy root, such as 'pycontain'"
    if not isinstance(parent, str) or not parent or parent.startswith("/") or parent.endswith("/"):
        raise InvalidArgument("parent: not a relative cgroup path", field="parent", value=parent, hint=hint)
    for part in parent.split("/"):
        validate_name(part, "parent")
    return parent


# -- devices -------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceRule:
    """One device rule: ``kind`` is ``"a"`` (all), ``"b"`` or ``"c"``;
    ``major``/``minor`` None mean ``*``; ``access`` a subset of ``"rwm"``."""

    allow: bool
    kind: str
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def v1_text(self) -> str:
        """The line devices.allow/devices.deny expect: ``c 1:3 rwm`` (cgroups v1 devices.rst)."""
        if self.kind == "a":
            return "a"
        maj = "*" if self.major is None else str(self.major)
        mnr = "*" if self.minor is None else str(self.minor)
        return f"{self.kind} {maj}:{mnr} {self.access}"

    def __str__(self) -> str:
        return ("allow " if self.allow else "deny ") + self.v1_text()


@dataclass(frozen=True)
class DevicePolicy:
    """A default (allow or deny everything) plus exceptions of the opposite kind.

    This is exactly what cgroup v1's devices controller can hold (a default
    behaviour and an exception list, kernel Documentation/admin-guide/cgroup-v1/
    devices.rst), and what the v2 BPF program implements; keeping the user's
    rules to this shape means both versions behave the same.
    """

    default_allow: bool
    exceptions: tuple[DeviceRule, ...]


_DEV_RE = re.compile(r"(?P<kind>[abc])(?:\s+(?P<maj>\*|[0-9]+):(?P<min>\*|[0-9]+))?(?:\s+(?P<acc>[rwm]{1,3}))?\Z")


def parse_device_rule(rule: Any, field_name: str = "devices") -> DeviceRule:
    """``"deny /dev/null"``, ``"allow c 1:3 rwm"``, ``"deny a"``, ``"/dev/null"`` (allow) or a DeviceRule."""
    hint = ("rules look like 'deny /dev/null', 'deny /dev/null w', 'allow c 1:3 rwm' or 'deny a' "
            "(a=all, b=block, c=char; access is a subset of rwm)")
    if isinstance(rule, DeviceRule):
        return rule
    if not isinstance(rule, str):
        raise InvalidArgument(f"{field_name}: a rule must be a string", field=field_name, value=rule, hint=hint)
    words = rule.split()
    allow = True
    if words and words[0] in ("allow", "deny"):
        allow = words.pop(0) == "allow"
    if not words:
        raise InvalidArgument(f"{field_name}: empty rule", field=field_name, value=rule, hint=hint)
    if words[0].startswith("/"):
        if len(words) > 2 or (len(words) == 2 and not re.fullmatch(r"[rwm]{1,3}", words[1])):
            raise InvalidArgument(f"{field_name}: bad rule", field=field_name, value=rule, hint=hint)
        kind, major, minor = cgroupfs.device_number(words[0])
        access = words[1] if len(words) == 2 else "rwm"
        return DeviceRule(allow, kind, major, minor, "".join(c for c in "rwm" if c in access))
    m = _DEV_RE.match(" ".join(words))
    if m is None:
        raise InvalidArgument(f"{field_name}: bad rule", field=field_name, value=rule, hint=hint)
    kind = m.group("kind")
    if kind == "a":
        if m.group("maj") is not None or m.group("acc") not in (None, "rwm", "rmw", "wrm", "wmr", "mrw", "mwr"):
            raise InvalidArgument(f"{field_name}: 'a' (all devices) takes no numbers", field=field_name,
                                  value=rule, hint=hint)
        return DeviceRule(allow, "a")
    maj, mnr, acc = m.group("maj"), m.group("min"), m.group("acc") or "rwm"
    if len(set(acc)) != len(acc):
        raise InvalidArgument(f"{field_name}: access repeats a letter", field=field_name, value=rule, hint=hint)
    return DeviceRule(
        allow,
        kind,
        None if maj in (None, "*") else int(maj),
        None if mnr in (None, "*") else int(mnr),
        "".join(c for c in "rwm" if c in acc),
    )


def parse_devices(rules: Any) -> DevicePolicy:
    """Rules in order. A leading ``"deny a"`` makes the default deny (then only
    allows may follow, like Docker's whitelist); otherwise the default is allow
    and only denies may follow. ``"allow a"`` first is the default and may be
    omitted."""
    hint = ("either ['deny a', 'allow c 1:3 rwm', ...] (deny all but) or ['deny /dev/null', ...] "
            "(allow all but)")
    if isinstance(rules, (str, bytes)) or not isinstance(rules, (list, tuple)):
        raise InvalidArgument("devices: expected a list of rules", field="devices", value=rules, hint=hint)
    parsed = [parse_device_rule(r) for r in rules]
    default_allow = True
    if parsed and parsed[0].kind == "a":
        default_allow = parsed[0].allow
        parsed = parsed[1:]
    for r in parsed:
        if r.kind == "a" or r.allow == default_allow:
            raise InvalidArgument(
                f"devices: rule {str(r)!r} does not fit a default-{'allow' if default_allow else 'deny'} list",
                field="devices", value=rules, hint=hint)
    return DevicePolicy(default_allow, tuple(parsed))


# -- io -----------------------------------------------------------------------------

IO_MAX_KEYS = ("rbps", "wbps", "riops", "wiops")


def _parse_device_key(dev: Any) -> tuple[int, int]:
    hint = "name the block device by path ('/dev/loop0') or as 'MAJ:MIN' ('7:0')"
    if isinstance(dev, str) and re.fullmatch(r"[0-9]+:[0-9]+", dev):
        a, b = dev.split(":")
        return int(a), int(b)
    if isinstance(dev, str) and dev.startswith("/"):
        kind, major, minor = cgroupfs.device_number(dev)
        if kind != "b":
            raise InvalidArgument("io_max: not a block device", field="io_max", value=dev, hint=hint)
        return major, minor
    raise InvalidArgument("io_max: bad device", field="io_max", value=dev, hint=hint)


def parse_io_max(value: Any) -> dict[tuple[int, int], dict[str, int]]:
    """``{"/dev/loop0": {"rbps": "1M", "wiops": 100}}`` -> ``{(7, 0): {"rbps": 1048576, "wiops": 100}}``.

    Keys are cgroup v2's io.max keys: rbps/wbps (bytes per second, sizes
    accepted) and riops/wiops (operations per second); ``"max"`` removes a limit.
    """
    hint = "io_max={'/dev/loop0': {'rbps': '1M', 'wbps': '1M', 'riops': 100, 'wiops': 100}}"
    if not isinstance(value, dict) or not value:
        raise InvalidArgument("io_max: expected a non-empty dict of device -> limits", field="io_max",
                              value=value, hint=hint)
    out: dict[tuple[int, int], dict[str, int]] = {}
    for dev, limits in value.items():
        key = _parse_device_key(dev)
        if not isinstance(limits, dict) or not limits:
            raise InvalidArgument("io_max: each device needs a dict of limits", field="io_max", value=limits,
                                  hint=hint)
        one: dict[str, int] = {}
        for k, v in limits.items():
            if k not in IO_MAX_KEYS:
                raise InvalidArgument(f"io_max: unknown key {k!r}", field="io_max", value=k, hint=hint)
            fname = f"io_max[{dev!r}][{k!r}]"
            if v == "max":
                one[k] = UNLIMITED
            elif k.endswith("bps"):
                one[k] = parse_size(v, fname)
            else:
                one[k] = parse_int(v, fname, minimum=1)
        out[key] = one
    return out


# -- hugetlb -------------------------------------------------------------------------


def hugetlb_size_name(page: Any) -> str:
    """A huge page size as the kernel names it in hugetlb files: ``"2MB"``, ``"1GB"``."""
    if isinstance(page, str) and page.upper().endswith("B") and not page.upper().endswith("IB"):
        page = page[:-1]
    n = parse_size(page, "hugetlb page size", minimum=4096)
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    raise InvalidArgument("hugetlb: odd page size", field="hugetlb", value=page, hint="e.g. '2MB' or '1GB'")


def parse_hugetlb(value: Any) -> dict[str, int]:
    """``{"2MB": "64M"}``: a byte limit per huge page size."""
    if not isinstance(value, dict) or not value:
        raise InvalidArgument("hugetlb: expected a dict of page size -> limit", field="hugetlb", value=value,
                              hint="hugetlb={'2MB': '64M'}")
    out = {}
    for page, limit in value.items():
        name = hugetlb_size_name(page)
        out[name] = UNLIMITED if limit == "max" else parse_size(limit, f"hugetlb[{page!r}]")
    return out


# -- the whole set -------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Parsed limits; None = not given, UNLIMITED (-1) = remove the limit."""

    memory: int | None = None  # bytes
    memory_swap: int | None = None  # bytes of swap on top of memory (v2 meaning)
    cpus: float | None = None  # CPUs (quota / period); UNLIMITED as -1.0
    cpu_period_us: int | None = None
    cpu_weight: int | None = None  # 1..10000, v2 scale (default 100)
    cpuset: frozenset[int] | None = None
    cpuset_mems: frozenset[int] | None = None
    pids: int | None = None
    io_weight: int | None = None  # 1..10000, v2 scale
    io_max: dict[tuple[int, int], dict[str, int]] | None = None
    devices: DevicePolicy | None = None
    net_classid: int | None = None
    net_prio: dict[str, int] | None = None
    hugetlb: dict[str, int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def given(self) -> list[str]:
        """Names of the limits that were given."""
        return [f.name for f in fields(self) if f.name != "extra" and getattr(self, f.name) is not None]


LIMIT_NAMES = tuple(f.name for f in fields(Limits) if f.name != "extra")


def _max_or(value: Any, parse: Any) -> Any:
    return UNLIMITED if value == "max" else parse(value)


def parse_limits(
    *,
    available_cpus: set[int] | None = None,
    available_mems: set[int] | None = None,
    cpu_count: int | None = None,
    **kw: Any,
) -> Limits:
    """Check every keyword strictly and return :class:`Limits`.

    Raises :class:`InvalidArgument` naming the field and value for any bad
    one, and for unknown keywords.
    """
    out: dict[str, Any] = {}
    for key, value in kw.items():
        if key not in LIMIT_NAMES:
            raise InvalidArgument(f"unknown cgroup limit {key!r}", field=key, value=value,
                                  hint=f"known limits: {', '.join(LIMIT_NAMES)}")
        if value is None:
            continue
        if key == "memory":
            out[key] = _max_or(value, lambda v: parse_size(v, "memory", minimum=4096))
        elif key == "memory_swap":
            out[key] = _max_or(value, lambda v: parse_size(v, "memory_swap", minimum=0))
        elif key == "cpus":
            # Like docker --cpus: more CPUs than the host has is a mistake, not a limit.
            most = float(cpu_count) if cpu_count else 4096.0
            out[key] = _max_or(value, lambda v, most=most: parse_cpus(v, "cpus", maximum=most))
        elif key == "cpu_period_us":
            # cpu.cfs_period_us range: 1 ms .. 1 s (kernel/sched/core.c).
            out[key] = parse_int(value, key, minimum=1000, maximum=1_000_000)
        elif key == "cpu_weight":
            out[key] = parse_weight(value, key)
        elif key == "io_weight":
            out[key] = parse_weight(value, key)
        elif key == "cpuset":
            out[key] = parse_cpuset(value, "cpuset", available=available_cpus)
        elif key == "cpuset_mems":
            out[key] = parse_cpuset(value, "cpuset_mems", available=available_mems)
        elif key == "pids":
            out[key] = _max_or(value, lambda v: parse_int(v, "pids", minimum=1, maximum=2**31 - 1,
                                                          hint="the most processes and threads at once, >= 1"))
        elif key == "io_max":
            out[key] = parse_io_max(value)
        elif key == "devices":
            out[key] = parse_devices(value)
        elif key == "net_classid":
            out[key] = parse_classid(value)
        elif key == "net_prio":
            out[key] = parse_net_prio(value)
        elif key == "hugetlb":
            out[key] = parse_hugetlb(value)
    cpus = out.get("cpus")
    if cpus is not None and cpus != UNLIMITED:
        period = out.get("cpu_period_us", DEFAULT_CPU_PERIOD_US)
        if cpus * period < 1000:
            raise InvalidArgument("cpus: quota below 1 ms per period", field="cpus", value=kw["cpus"],
                                  hint="raise cpus or cpu_period_us (the kernel's minimum quota is 1 ms)")
    return Limits(**out)


def parse_classid(value: Any) -> int:
    """A net_cls classid: an int (``0x100010``) or tc's ``"MAJ:MIN"`` in hex (``"10:10"``)."""
    hint = "a classid like 0x100010 or '10:10' (tc's major:minor, hexadecimal)"
    if isinstance(value, str) and re.fullmatch(r"[0-9a-fA-F]{1,4}:[0-9a-fA-F]{1,4}", value):
        a, b = value.split(":")
        return int(a, 16) << 16 | int(b, 16)
    return parse_int(value, "net_classid", minimum=0, maximum=2**32 - 1, hint=hint)


def parse_net_prio(value: Any) -> dict[str, int]:
    """``{"eth0": 5}``: net_prio.ifpriomap entries (interface -> skb priority)."""
    hint = "net_prio={'eth0': 5}: interface name -> priority (0 .. 2**32-1)"
    if not isinstance(value, dict) or not value:
        raise InvalidArgument("net_prio: expected a dict of interface -> priority", field="net_prio",
                              value=value, hint=hint)
    out = {}
    for ifname, prio in value.items():
        if not isinstance(ifname, str) or not re.fullmatch(r"[^\s/:]{1,15}", ifname):
            raise InvalidArgument("net_prio: bad interface name", field="net_prio", value=ifname, hint=hint)
        out[ifname] = parse_int(prio, f"net_prio[{ifname!r}]", minimum=0, maximum=2**32 - 1, hint=hint)
    return out


# -- translations between versions ------------------------------------------------------


def weight_to_shares(weight: int) -> int:
    """cgroup v2 cpu.weight (1..10000) -> v1 cpu.shares (2..262144).

    The inverse of runc's ConvertCPUSharesToCgroupV2Value (libcontainer/cgroups/
    utils.go), which maps shares [2, 262144] linearly onto weight [1, 10000]:
    weight = 1 + (shares - 2) * 9999 / 262142. Using the same line keeps a
    container's share of the CPU the same on both versions.
    """
    # Rounded up so that shares_to_weight(weight_to_shares(w)) == w.
    return 2 + -((-(weight - 1) * 262142) // 9999)


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares -> v2 cpu.weight, runc's formula (see :func:`weight_to_shares`)."""
    if shares <= 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def bytes_or_inf(n: int) -> float:
    """A v1 "no limit" (a page-rounded LONG_MAX) as infinity, other values as they are."""
    return math.inf if n >= 2**62 else float(n)
