"""The docker-like CLI, driven as a user would: separate processes, one state dir."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from pycontain.container import Container


def pc(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pycontain", *args], capture_output=True, text=True,
                          env=os.environ, timeout=60, check=check)


def test_run_exit_code_is_the_containers() -> None:
    r = pc("run", "--rm", "host", "sh", "-c", "echo hi; exit 4")
    assert (r.returncode, r.stdout) == (4, "hi\n")
    assert pc("ps", "-a", "-q").stdout == ""


def test_run_limits_and_env() -> None:
    r = pc("run", "--rm", "-m", "64M", "--pids-limit", "20", "-e", "A=1", "--hostname", "box", "host",
           "sh", "-c", "echo $A $(hostname)")
    assert r.stdout == "1 box\n", r.stderr


def test_bad_input_is_a_clear_error() -> None:
    r = pc("run", "--rm", "--memory", "32bm", "host", "true")
    assert r.returncode == 2 and "memory" in r.stderr and "Traceback" not in r.stderr
    r = pc("run", "--rm", "-v", "/tmp:/proc", "host", "true")
    assert r.returncode == 2 and "volumes" in r.stderr


def test_detached_lifecycle() -> None:
    assert pc("run", "-d", "--name", "web", "host", "sh", "-c", "echo started; exec sleep 30").stdout == "web\n"
    try:
        ps = pc("ps").stdout
        assert "web" in ps and "running" in ps
        r = pc("exec", "web", "sh", "-c", "hostname; exit 3")
        assert (r.returncode, r.stdout) == (3, "web\n")
        assert pc("pause", "web").returncode == 0
        assert "paused" in pc("ps").stdout
        assert pc("unpause", "web").returncode == 0
        stats = pc("stats", "web")
        assert stats.returncode == 0 and "web" in stats.stdout
        assert pc("stop", "-t", "5", "web").returncode == 0
        deadline = time.monotonic() + 5
        while "exited" not in pc("ps", "-a").stdout and time.monotonic() < deadline:
            time.sleep(0.1)
        ps = pc("ps", "-a").stdout.splitlines()
        assert ps[0].split() == ["NAME", "STATUS", "PID", "IMAGE", "COMMAND", "CREATED"]
        assert ps[1].split()[:3] == ["web", "exited", "(143)"]  # docker's way: the code with the status
        assert pc("logs", "web").stdout == "started\n"
        assert '"exit_code": 143' in pc("inspect", "web").stdout
        assert pc("exec", "web", "true").returncode != 0  # exec into a stopped container
    finally:
        pc("rm", "-f", "web")
    assert pc("ps", "-a", "-q").stdout == ""
    assert pc("rm", "web").returncode == 1


def test_listing_commands_do_not_import_pandas() -> None:
    # pandas is ~0.3 s of import: ps, images and stats print from plain records.
    with Container(command=["sleep", "30"], name="listed"):
        code = ("import sys; from pycontain.cli import main\n"
                "for argv in (['ps'], ['ps', '-a', '--format', 'json'], ['images', '-a'], ['stats']):\n"
                "    assert main(argv) == 0, argv\n"
                "print('pandas' in sys.modules)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ,
                             check=True).stdout.splitlines()
    assert out[-1] == "False"
    assert any(line.startswith("listed ") and "running" in line for line in out)
