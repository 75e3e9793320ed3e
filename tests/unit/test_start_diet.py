"""What a CLI start skips (issue #5), and that the shortcuts give the same result.

- compile_default_bpf: the default seccomp program, from disk without
  building the default profile, byte for byte what compile_bpf makes;
- ChildSpec(returns=False): a target that never returns is started without
  cloudpickle, and its exception still comes back;
- pycontain.engine's Zygote/shared_zygote load on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pycontain.engine import ChildSpec
from pycontain.errors import InvalidArgument

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_default_program_from_disk_is_compile_bpf_s_and_skips_the_profile() -> None:
    pytest.importorskip("pyseccomp")
    from pycontain.backends import seccomp
    from pycontain.kernel.constants import DOCKER_DEFAULT_CAPS

    caps = [*DOCKER_DEFAULT_CAPS, "CAP_SYS_ADMIN"]
    want = seccomp.compile_bpf(seccomp.default_profile(), caps)
    assert seccomp.compile_default_bpf(caps) == want
    # A new process (the state dir is this test's, tests/conftest.py) takes it
    # from disk: no libseccomp, not even the profile parser's module.
    out = _fresh(
        "import sys\n"
        "from pycontain.backends import hardening\n"
        "program = hardening.prepare(cap_add=['SYS_ADMIN']).bpf\n"
        "sys.stdout.write(program.hex())\n"
        "sys.stderr.write(repr(('pyseccomp' in sys.modules, 'pycontain.backends.seccomp' in sys.modules)))\n"
    )
    assert out.returncode == 0, out.stderr
    assert bytes.fromhex(out.stdout) == want
    assert out.stderr == "(False, False)"
    # other capabilities: another program
    assert seccomp.compile_default_bpf(DOCKER_DEFAULT_CAPS) == seccomp.compile_bpf(
        seccomp.default_profile(), DOCKER_DEFAULT_CAPS)


def test_a_target_that_never_returns_starts_without_cloudpickle() -> None:
    # No namespace: a plain fork of this test's fresh interpreter.
    out = _fresh(
        "import os, sys\n"
        "from pycontain.engine import ChildSpec, start\n"
        "def leave(): os._exit(7)\n"
        "def boom(): raise ValueError('setup broke')\n"
        "child = start(ChildSpec(target=leave, returns=False))\n"
        "code = child.wait()\n"
        "try:\n"
        "    start(ChildSpec(target=boom, returns=False)).result()\n"
        "except ValueError as e:\n"
        "    err = str(e)\n"
        "print(code, repr(err), 'cloudpickle' in sys.modules)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "7 'setup broke' False"


def test_returns_is_a_bool() -> None:
    assert ChildSpec(target=print).returns is True
    with pytest.raises(InvalidArgument) as e:
        ChildSpec(target=print, returns="no")  # type: ignore[arg-type]
    assert e.value.field == "returns"


def test_engine_loads_the_zygote_on_first_use() -> None:
    out = _fresh(
        "import sys\n"
        "import pycontain.engine as engine\n"
        "before = 'pycontain.engine.zygote' in sys.modules or 'socket' in sys.modules\n"
        "from pycontain.engine import Zygote, shared_zygote\n"
        "from pycontain.engine.zygote import Zygote as Z\n"
        "print(before, Zygote is Z, callable(shared_zygote))\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]
    with pytest.raises(AttributeError):
        import pycontain.engine as engine

        engine.no_such_name  # noqa: B018
