"""doctor as an ordinary user: it reports, it never raises.

Runs the real doctor (probe child included) in a subprocess as ``nobody``.
Needs root to switch users, so it skips otherwise; the interpreter must be
one ``nobody`` can execute (the test's own, else the system's python3).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOBODY = 65534

CODE = f"""
import json, sys
sys.path.insert(0, {REPO!r})
import pycontain
report = pycontain.doctor(timeout=20)
text = str(report)
print(json.dumps({{"report": report.to_dict(), "text": text}}))
"""


def _as_nobody(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    setpriv = shutil.which("setpriv")
    assert setpriv
    return subprocess.run(
        [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", *argv],
        capture_output=True, text=True, cwd="/", timeout=60,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}, **kw,  # type: ignore[call-overload]
    )


def _interpreter_for_nobody() -> str:
    for exe in (sys.executable, "/usr/bin/python3"):
        if not exe or not os.path.exists(exe):
            continue
        # The interpreter must also be able to start itself again (doctor's
        # probe child): a python under root's 0700 home may start through
        # setpriv yet fail to re-exec once the uid has changed.
        probe = _as_nobody([exe, "-c", f"import sys, subprocess; sys.path.insert(0, {REPO!r}); "
                                        "assert sys.version_info >= (3, 11); import pycontain; "
                                        "subprocess.run([sys.executable, '-c', 'pass'], check=True)"])
        if probe.returncode == 0:
            return exe
    pytest.skip(f"no Python 3.11+ that uid {NOBODY} can run with {REPO} importable")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to user nobody")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_doctor_as_nobody_reports_instead_of_raising() -> None:
    exe = _interpreter_for_nobody()
    out = _as_nobody([exe, "-c", CODE])
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    report, text = data["report"], data["text"]
    print(text)
    checks = {(c["area"], c["item"]): c for c in report["checks"]}
    root = checks[("privileges", "root")]
    assert report["root"] is False
    assert root["status"] in ("limited", "missing")
    assert f"not root (uid {NOBODY})" in root["detail"]
    assert f"uid {NOBODY}" in text
    # Every shortfall comes with a hint.
    for c in report["checks"]:
        assert c["status"] in ("ok", "limited", "missing", "unknown")
        if c["status"] != "ok":
            assert c["hint"], c
    # What nobody may not do is reported, not attempted with privileges:
    # no namespace other than user works directly.
    for kind in ("mnt", "uts", "ipc", "pid", "net", "cgroup", "time"):
        row = checks[("namespaces", kind)]
        assert row["status"] in ("limited", "missing"), row
    # The probe child ran (as nobody too): a user namespace is the one kind an
    # unprivileged user may create where the kernel allows it.
    assert checks[("namespaces", "user")]["status"] != "unknown"
    # cgroup hierarchies root owns are not writable by nobody.
    for name, info in report["controllers"].items():
        assert not info["usable"], name
