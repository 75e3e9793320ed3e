"""Image builds: every instruction, the cache (unchanged rebuild runs no
step; a change in step k reuses the steps before k), failures, and the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pycontain
from pycontain.build import BuildError, build, parse
from pycontain.errors import InvalidArgument, NotFound

CONTAINERFILE = """\
# a busybox image from scratch
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV GREETING=hello \\
    PATH=/bin
WORKDIR /srv
COPY app/ /srv/app/
RUN echo built > /srv/stamp
USER 0:0
LABEL purpose=test
ENTRYPOINT ["sh", "-c"]
CMD ["echo $GREETING; cat /srv/stamp /srv/app/main.txt; pwd"]
"""


@pytest.fixture
def context(tmp_path: Path) -> Path:
    ctx = tmp_path / "ctx"
    (ctx / "app").mkdir(parents=True)
    shutil.copy(shutil.which("busybox") or "/bin/busybox", ctx / "busybox")
    (ctx / "app" / "main.txt").write_text("v1\n")
    (ctx / "Containerfile").write_text(CONTAINERFILE)
    return ctx


def test_build_runs_every_instruction(context: Path) -> None:
    result = build(context, tag="built:1", progress=False)
    assert len(result.steps) == 10 and result.cached_steps == 0
    img = pycontain.Image.get("built:1")
    assert img.config.workdir == "/srv" and img.config.labels["purpose"] == "test"
    with pycontain.Container(image="built:1") as c:  # ENTRYPOINT + CMD are the default
        assert c.wait(10) == 0
    r = pycontain.run(["sh", "-c", "echo $GREETING; cat /srv/stamp /srv/app/main.txt; pwd"], image=img)
    assert r.stdout == "hello\nbuilt\nv1\n/srv\n"
    # layers: COPY, RUN, COPY, RUN; the config steps add none
    assert len(img.layers) == 4


def test_rebuild_is_cached_and_a_change_reuses_earlier_steps(context: Path) -> None:
    first = build(context, tag="built:2", progress=False)
    again = build(context, tag="built:2", progress=False)
    assert again.cached_steps == len(again.steps)
    assert again.image.digest == first.image.digest
    assert sum(s.seconds for s in again.steps) < sum(s.seconds for s in first.steps)
    (context / "app" / "main.txt").write_text("v2\n")
    changed = build(context, tag="built:2", progress=False)
    cached = [s.cached for s in changed.steps]
    k = next(i for i, s in enumerate(changed.steps) if s.instruction.startswith("COPY app/"))
    assert cached == [True] * k + [False] * (len(cached) - k)
    r = pycontain.run(["cat", "/srv/app/main.txt"], image="built:2")
    assert r.stdout == "v2\n"


def test_failed_run_step_is_a_build_error(tmp_path: Path, context: Path) -> None:
    (context / "Containerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n"
                                           "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo oops; exit 3\"]\n")
    with pytest.raises(BuildError) as info:
        build(context, progress=False)
    assert info.value.returncode == 3 and "oops" in info.value.output
    assert pycontain.containers().empty


@pytest.mark.parametrize("text", ["RUN true", "FROM scratch\nFROB x", "FROM scratch\nRUN", "FROM a\nFROM b",
                                  "FROM scratch\nRUN x \\"])
def test_bad_containerfiles(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(text)


def test_missing_base_and_copy_source(context: Path) -> None:
    with pytest.raises(NotFound):
        build("FROM nosuchimage:1\nRUN true", progress=False)
    (context / "Containerfile").write_text("FROM scratch\nCOPY missing /x\n")
    with pytest.raises(NotFound):
        build(context, progress=False)
    (context / "Containerfile").write_text("FROM scratch\nCOPY ../../etc/passwd /x\n")
    with pytest.raises(InvalidArgument):
        build(context, progress=False)


def test_cli_build(context: Path) -> None:
    def pc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pycontain", *args], capture_output=True, text=True,
                              env=os.environ, timeout=120)

    r = pc("build", "-t", "cli-built:1", str(context))
    assert r.returncode == 0 and r.stdout.strip() == "cli-built:1", r.stderr
    r = pc("build", "-t", "cli-built:1", str(context))
    assert "10 of 10 steps from the cache" in r.stderr
    assert "cli-built:1" in pc("images").stdout
