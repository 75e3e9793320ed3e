"""Compiled seccomp programs kept between processes, in the state directory.

Compiling the default profile costs libseccomp tens of milliseconds, and
importing pyseccomp (which runs ``ldconfig -p`` to find the library) as
much again. :func:`pycontain.backends.seccomp.compile_bpf` caches per
process, which a notebook kernel reuses; the ``pycontain`` command starts one
process per container and would pay both every time. So the program is also
kept as a file: ``<state dir>/seccomp/<key>.bpf``.

The key covers everything the program depends on: the parsed profile and
the capability set (both plain tuples, so their repr is stable), the machine
and the running kernel (rules depend on both), and the code that compiles:
this package's seccomp module and pyseccomp (size and mtime), and
/etc/ld.so.cache (rewritten by ldconfig whenever a shared library such as
libseccomp is installed or upgraded). The state directory is a tmpfs for root
(/run/pycontain), so nothing outlives a reboot either.

A program file is trusted only when it is a regular file owned by this user
in a directory owned by this user, neither writable by group or others, and
its size is a whole number of BPF instructions within the kernel's limit.
Anything else is a miss, and the program is compiled as before.
"""

from __future__ import annotations

import importlib.util
import os
import stat
from collections.abc import Iterable
from typing import Any

from pycontain.statedir import state_dir

__all__ = ["load", "store", "cache_key"]

FORMAT = 1
_INSN = 8  # sizeof(struct sock_filter)
_MAX_INSNS = 4096  # BPF_MAXINSNS


def file_id(path: str | None) -> tuple[int, int] | None:
    """(size, mtime in ns) of ``path``: a stand-in for its contents in a key; None if missing."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _seccomp_module_file() -> str:
    # pycontain.backends.seccomp's source, found without importing it.
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "seccomp.py")


def cache_key(profile: Any, caps: Iterable[str]) -> str:
    """The file name stem for ``profile`` compiled for a container keeping ``caps``."""
    try:
        spec = importlib.util.find_spec("pyseccomp")
    except (ImportError, ValueError):
        spec = None
    parts = (
        FORMAT,
        profile,
        tuple(sorted(caps)),
        os.uname().machine,
        os.uname().release,
        file_id(_seccomp_module_file()),
        file_id(spec.origin if spec is not None else None),
        file_id("/etc/ld.so.cache"),
    )
    return _sha256_hex(repr(parts).encode())


def _sha256_hex(data: bytes) -> str:
    # CPython's own SHA-256, the one hashlib falls back on: importing it costs
    # ~0.3 ms, hashlib ~3 ms (it loads OpenSSL), on every CLI start.
    try:
        from _sha256 import sha256  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # CPython 3.12+
        except ImportError:
            from hashlib import sha256
    return str(sha256(data).hexdigest())


_DEFAULT_PROGRAMS: dict[frozenset[str], bytes] = {}


def default_program(caps: Iterable[str]) -> bytes:
    """The built-in default profile compiled for a container keeping ``caps``.

    Taken from this process's memory or the state dir when there, without
    importing :mod:`pycontain.backends.seccomp` (whose parser costs a CLI
    start ~4 ms): that module's code makes the default profile from the
    kernel constants, so the disk key names those two files instead of the
    profile. Otherwise compiled with :func:`~pycontain.backends.seccomp.compile_bpf`
    and kept.
    """
    from pycontain.kernel import constants

    capkey = frozenset(n.upper() if n.upper().startswith("CAP_") else "CAP_" + n.upper() for n in caps)
    program = _DEFAULT_PROGRAMS.get(capkey)
    if program is None:
        key = cache_key(("default", file_id(constants.__file__)), capkey)
        program = load(key)
        if program is None:
            from pycontain.backends import seccomp

            compiled = seccomp.compile_bpf(seccomp.default_profile(), capkey)
            assert compiled is not None
            program = compiled
            store(key, program)
        _DEFAULT_PROGRAMS[capkey] = program
    return program


def _directory() -> str:
    return os.path.join(state_dir(), "seccomp")


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load(key: str) -> bytes | None:
    """The program stored under ``key``, or None (missing, or not to be trusted)."""
    directory = _directory()
    try:
        dir_st = os.stat(directory, follow_symlinks=False)
        if not stat.S_ISDIR(dir_st.st_mode) or not _private(dir_st):
            return None
        fd = os.open(os.path.join(directory, key + ".bpf"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        size = st.st_size
        if not stat.S_ISREG(st.st_mode) or not _private(st) or not 0 < size <= _MAX_INSNS * _INSN \
                or size % _INSN:
            return None
        data = os.read(fd, size + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None


def store(key: str, program: bytes) -> None:
    """Keep ``program`` under ``key`` (best effort: a failure only loses the cache)."""
    directory = _directory()
    tmp = os.path.join(directory, f".{key}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        dir_st = os.stat(directory, follow_symlinks=False)
        if not stat.S_ISDIR(dir_st.st_mode) or not _private(dir_st):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(program)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(directory, key + ".bpf"))  # readers see all of it or none
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
