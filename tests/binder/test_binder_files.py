"""binder/ follows repo2docker's conventions and stays in step with pyproject.toml."""

from __future__ import annotations

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINDER = os.path.join(ROOT, "binder")


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r.strip(), maxsplit=1)[0].lower() for r in requirements
            if r.strip() and not r.strip().startswith("#")}


def test_requirements_match_the_package_dependencies() -> None:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    with open(os.path.join(BINDER, "requirements.txt")) as f:
        binder = f.read().splitlines()
    assert _names(binder) == _names(deps)


def test_post_build_is_executable_and_installs_pycontain() -> None:
    path = os.path.join(BINDER, "postBuild")
    assert os.access(path, os.X_OK)
    text = open(path).read()
    assert text.startswith("#!") and "pip install" in text


def test_runtime_is_a_python_pycontain_supports() -> None:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        floor = tomllib.load(f)["project"]["requires-python"]
    runtime = open(os.path.join(BINDER, "runtime.txt")).read().strip()
    m = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert m, runtime
    assert floor == ">=3.11" and int(m.group(1)) >= 11


def test_every_notebook_starts_with_doctor_and_ends_with_what_to_try_next() -> None:
    import json

    nb_dir = os.path.join(ROOT, "notebooks")
    notebooks = sorted(n for n in os.listdir(nb_dir) if n.endswith(".ipynb"))
    assert len(notebooks) >= 7
    for name in notebooks:
        cells = json.load(open(os.path.join(nb_dir, name)))["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert "doctor()" in "".join(code[0]["source"]), name
        assert cells[0]["cell_type"] == "markdown" and "What you will learn" in "".join(cells[0]["source"]), name
        assert "What to try next" in "".join(cells[-1]["source"]), name
