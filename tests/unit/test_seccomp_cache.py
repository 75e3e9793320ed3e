"""Compiled seccomp programs kept on disk (pycontain.backends.seccomp_cache).

The state dir is private per test (tests/conftest.py). Compiling needs
pyseccomp + libseccomp, not root.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pycontain.backends import seccomp, seccomp_cache
from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS

pytest.importorskip("pyseccomp")

PROGRAM = bytes(range(8)) * 3


def test_store_then_load() -> None:
    assert seccomp_cache.load("k1") is None
    seccomp_cache.store("k1", PROGRAM)
    assert seccomp_cache.load("k1") == PROGRAM
    directory = os.path.join(os.environ["PYCONTAIN_STATE_DIR"], "seccomp")
    assert os.stat(directory).st_mode & 0o777 == 0o700
    assert os.stat(os.path.join(directory, "k1.bpf")).st_mode & 0o777 == 0o600
    assert not [n for n in os.listdir(directory) if n.endswith(".tmp")]


def test_untrusted_or_odd_files_are_misses() -> None:
    seccomp_cache.store("k", PROGRAM)
    directory = os.path.join(os.environ["PYCONTAIN_STATE_DIR"], "seccomp")
    path = os.path.join(directory, "k.bpf")
    os.chmod(path, 0o620)  # group-writable: someone else may have changed it
    assert seccomp_cache.load("k") is None
    os.chmod(path, 0o600)
    os.chmod(directory, 0o777)
    assert seccomp_cache.load("k") is None
    os.chmod(directory, 0o700)
    assert seccomp_cache.load("k") == PROGRAM
    with open(path, "ab") as f:  # not a whole number of instructions
        f.write(b"x")
    assert seccomp_cache.load("k") is None
    os.unlink(path)
    os.symlink(os.path.join(directory, "elsewhere"), path)
    assert seccomp_cache.load("k") is None
    seccomp_cache.store("empty", b"")
    assert seccomp_cache.load("empty") is None


def test_key_depends_on_profile_and_caps() -> None:
    profile = seccomp.default_profile()
    caps = list(DOCKER_DEFAULT_CAPS)
    key = seccomp_cache.cache_key(profile, caps)
    assert key == seccomp_cache.cache_key(profile, reversed(caps))
    assert key != seccomp_cache.cache_key(profile, [*caps, "CAP_SYS_ADMIN"])
    other = seccomp.parse_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]})
    assert key != seccomp_cache.cache_key(other, caps)


def test_next_process_takes_the_program_from_disk_without_pyseccomp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp, "_BPF_CACHE", {})  # compile here, in this test's state dir
    first = seccomp.compile_bpf(seccomp.default_profile())
    code = (
        "import sys\n"
        "from pycontain.backends import seccomp\n"
        "program = seccomp.compile_bpf(seccomp.default_profile())\n"
        "sys.stdout.buffer.write(program)\n"
        "sys.stderr.write(str('pyseccomp' in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    assert out.stdout == first and out.stderr == b"False"
    # and what the disk held is what libseccomp makes
    seccomp._BPF_CACHE.clear()
    key = seccomp_cache.cache_key(seccomp.default_profile(), DOCKER_DEFAULT_CAPS)
    os.unlink(os.path.join(os.environ["PYCONTAIN_STATE_DIR"], "seccomp", key + ".bpf"))
    assert seccomp.compile_bpf(seccomp.default_profile()) == first
