"""Strict parsers for the human values users type: sizes, CPUs, cpusets, weights.

Everything a user can pass as a limit goes through one of these functions
before anything touches the kernel (DESIGN.md §7, §10). They are strict on
purpose: a typo must fail loudly instead of becoming a surprising limit.

* ``True``/``False`` are rejected everywhere (``bool`` is an ``int`` in
  Python, so ``memory=True`` would otherwise mean one byte).
* Exponents (``"1e9"``), ``"nan"``, ``"inf"``, signs, spaces, underscores and
  trailing junk (``"32bm"``) are rejected.
* Values beyond what the kernel can store (a signed 64-bit counter) are
  rejected instead of being silently clamped.

Every failure is an :class:`~pycontain.errors.InvalidArgument` (a
``ValueError``) that names the field and the value and says what would work.

Examples::

    >>> parse_size("1.5G", "memory")
    1610612736
    >>> parse_cpus("0.5")
    0.5
    >>> format_cpuset(parse_cpuset("0-1,3", "cpuset", available={0, 1, 2, 3}))
    '0-1,3'
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from pycontain.errors import InvalidArgument

__all__ = [
    "MAX_BYTES",
    "format_cpuset",
    "format_size",
    "parse_bool",
    "parse_cpus",
    "parse_cpuset",
    "parse_int",
    "parse_size",
    "parse_weight",
]

#: The largest byte count pycontain accepts: the kernel keeps limits in
#: signed 64-bit counters (``PAGE_COUNTER_MAX`` is even lower, page-rounded).
MAX_BYTES = 2**63 - 1

# Suffixes are powers of 1024 whatever their spelling, like Docker's and
# podman's --memory ("b, k, m, g"): users write "512M" and mean MiB.
_SIZE_SUFFIX = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}
_SIZE_RE = re.compile(r"(?P<num>[0-9]+(?:\.[0-9]+)?)(?P<unit>[KMGTPEkmgtpe]?)(?P<b>i?[Bb])?\Z")
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?\Z")
_INT_RE = re.compile(r"[0-9]+\Z")

_SIZE_HINT = "give bytes as an int or a string like '512M', '1.5G' or '4096' (K/M/G/T/P are powers of 1024)"


def _reject_bool(value: Any, field: str, hint: str) -> None:
    if isinstance(value, bool):
        raise InvalidArgument(f"{field} must not be a bool", field=field, value=value, hint=hint)


def parse_size(value: Any, field: str = "size", *, minimum: int = 1, maximum: int = MAX_BYTES) -> int:
    """A byte count from an int or a string like ``"512M"``, ``"1.5G"``, ``"4096"``.

    Suffixes K, M, G, T, P, E (optionally followed by ``B`` or ``iB``, any case)
    are powers of 1024. A fraction is allowed with a suffix and rounded down to
    whole bytes (``"1.5K"`` is 1536). Floats are refused: ``2**30`` or
    ``"1G"`` say the same without rounding surprises.

    Raises :class:`InvalidArgument` naming ``field`` and the value for bools,
    floats, negatives, exponents, nan/inf, junk, values below ``minimum`` or
    above ``maximum``.

    >>> parse_size("64M", "memory")
    67108864
    """
    _reject_bool(value, field, _SIZE_HINT)
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m is None:
            raise InvalidArgument(f"{field}: not a size", field=field, value=value, hint=_SIZE_HINT)
        num, unit = m.group("num"), m.group("unit").upper()
        if "." in num and not unit:
            raise InvalidArgument(
                f"{field}: a fraction of a byte makes no sense", field=field, value=value, hint=_SIZE_HINT
            )
        from decimal import Decimal, InvalidOperation  # here: ~1.5 ms to import, for size strings only

        try:
            exact = Decimal(num) * (Decimal(1024) ** _SIZE_SUFFIX[unit])
        except InvalidOperation:  # pragma: no cover - the regex admits only digits
            raise InvalidArgument(f"{field}: not a size", field=field, value=value, hint=_SIZE_HINT) from None
        n = int(exact)  # rounds toward zero: whole bytes
    else:
        raise InvalidArgument(
            f"{field}: expected an int or a string, got {type(value).__name__}",
            field=field,
            value=value,
            hint=_SIZE_HINT,
        )
    if n < minimum:
        raise InvalidArgument(
            f"{field}: must be at least {minimum} bytes", field=field, value=value, hint=_SIZE_HINT
        )
    if n > maximum:
        raise InvalidArgument(
            f"{field}: too large (the limit is {maximum} bytes)", field=field, value=value, hint=_SIZE_HINT
        )
    return n


def format_size(n: int) -> str:
    """A byte count for humans: ``1.5 GiB``, ``64.0 MiB``, ``512 B``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} EiB"


def parse_cpus(
    value: Any, field: str = "cpus", *, minimum: float = 0.01, maximum: float = 4096.0
) -> float:
    """A number of CPUs as a float, from an int, a float or a string like ``"1.5"``.

    ``minimum`` defaults to 0.01: a quota below 1 ms per 100 ms period is
    refused by the kernel (cfs_quota_us must be >= 1000, sched(7)).

    Raises :class:`InvalidArgument` for bools, zero, negatives, nan, inf,
    exponents and junk.

    >>> parse_cpus("1.5")
    1.5
    """
    hint = f"give CPUs as a number like 0.5, 2 or '1.5', from {minimum:g} to {maximum:g}"
    _reject_bool(value, field, hint)
    if isinstance(value, int):
        x = float(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{field}: must be a finite number", field=field, value=value, hint=hint)
        x = value
    elif isinstance(value, str):
        if not _DECIMAL_RE.match(value):
            raise InvalidArgument(f"{field}: not a number of CPUs", field=field, value=value, hint=hint)
        x = float(value)
    else:
        raise InvalidArgument(
            f"{field}: expected a number or a string, got {type(value).__name__}",
            field=field,
            value=value,
            hint=hint,
        )
    if x <= 0:
        raise InvalidArgument(f"{field}: must be positive", field=field, value=value, hint=hint)
    if x < minimum:
        raise InvalidArgument(f"{field}: too small (at least {minimum})", field=field, value=value, hint=hint)
    if x > maximum:
        raise InvalidArgument(f"{field}: too large (at most {maximum})", field=field, value=value, hint=hint)
    return x


def parse_int(value: Any, field: str, *, minimum: int = 0, maximum: int = 2**63 - 1, hint: str | None = None) -> int:
    """A whole number from an int or a decimal string, within ``[minimum, maximum]``.

    >>> parse_int("32", "pids", minimum=1)
    32
    """
    hint = hint or f"give a whole number between {minimum} and {maximum}"
    _reject_bool(value, field, hint)
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and _INT_RE.match(value):
        n = int(value)
    else:
        raise InvalidArgument(f"{field}: not a whole number", field=field, value=value, hint=hint)
    if not minimum <= n <= maximum:
        raise InvalidArgument(
            f"{field}: out of range [{minimum}, {maximum}]", field=field, value=value, hint=hint
        )
    return n


def parse_weight(value: Any, field: str = "weight", *, minimum: int = 1, maximum: int = 10000) -> int:
    """A relative weight in the cgroup v2 range 1..10000 (the default is 100).

    >>> parse_weight(200, "cpu_weight")
    200
    """
    return parse_int(
        value,
        field,
        minimum=minimum,
        maximum=maximum,
        hint=f"a weight is a whole number from {minimum} to {maximum}; 100 is the default share",
    )


def parse_bool(value: Any, field: str) -> bool:
    """Only ``True`` or ``False`` (not 0/1, not "yes")."""
    if not isinstance(value, bool):
        raise InvalidArgument(f"{field}: must be True or False", field=field, value=value,
                              hint="pass a bool")
    return value


def parse_cpuset(value: Any, field: str = "cpuset", *, available: Iterable[int] | None = None) -> frozenset[int]:
    """A set of CPU (or memory node) numbers from ``"0-1,3"``, an int or an iterable of ints.

    Ranges must go upwards (``"3-1"`` is refused) and, when ``available`` is
    given (the host's online CPUs), every number must be in it: a cpuset the
    kernel would refuse fails here, before a cgroup exists.

    >>> sorted(parse_cpuset("0-2,5"))
    [0, 1, 2, 5]
    """
    hint = "a list like '0', '0-1' or '0-1,3' of CPU numbers"
    avail = frozenset(available) if available is not None else None
    if avail is not None:
        hint += f"; this host has {format_cpuset(avail)}"
    _reject_bool(value, field, hint)
    cpus: set[int] = set()
    if isinstance(value, int):
        cpus.add(value)
        if value < 0:
            raise InvalidArgument(f"{field}: negative CPU number", field=field, value=value, hint=hint)
    elif isinstance(value, str):
        if not value:
            raise InvalidArgument(f"{field}: empty", field=field, value=value, hint=hint)
        for part in value.split(","):
            lo_s, sep, hi_s = part.partition("-")
            if not _INT_RE.match(lo_s) or (sep and not _INT_RE.match(hi_s)):
                raise InvalidArgument(f"{field}: not a cpuset", field=field, value=value, hint=hint)
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
            if hi < lo:
                raise InvalidArgument(
                    f"{field}: range {part!r} goes backwards", field=field, value=value, hint=hint
                )
            if hi > 65535:
                raise InvalidArgument(f"{field}: CPU number too large", field=field, value=value, hint=hint)
            cpus.update(range(lo, hi + 1))
    elif isinstance(value, (set, frozenset, list, tuple, range)):
        for item in value:
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise InvalidArgument(f"{field}: not a CPU number: {item!r}", field=field, value=value, hint=hint)
            cpus.add(item)
        if not cpus:
            raise InvalidArgument(f"{field}: empty", field=field, value=value, hint=hint)
    else:
        raise InvalidArgument(
            f"{field}: expected a string like '0-1,3', got {type(value).__name__}",
            field=field,
            value=value,
            hint=hint,
        )
    if avail is not None:
        missing = cpus - avail
        if missing:
            raise InvalidArgument(
                f"{field}: {format_cpuset(missing)} not available on this host",
                field=field,
                value=value,
                hint=hint,
            )
    return frozenset(cpus)


def format_cpuset(cpus: Iterable[int]) -> str:
    """The kernel's list format: ``{0, 1, 3}`` -> ``"0-1,3"``."""
    nums = sorted(set(cpus))
    parts = []
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        parts.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ",".join(parts)
