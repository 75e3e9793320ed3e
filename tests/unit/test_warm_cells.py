"""The cell zygote's import following and the warm pool's bookkeeping (no kernel, no root)."""

from __future__ import annotations

import types

from pycontain.notebook import warm


class FakeZygote:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def preload(self, names: list[str]) -> list[tuple[str, str]]:
        self.asked.append(list(names))
        return []


def _module(name: str, path: str | None) -> types.ModuleType:
    m = types.ModuleType(name)
    if path is not None:
        m.__file__ = path
    return m


def test_follow_imports_sends_new_third_party_packages_once() -> None:
    warm._preloaded.clear()
    z = FakeZygote()
    mods = {
        "numpy": _module("numpy", "/v/lib/python3.11/site-packages/numpy/__init__.py"),
        "numpy.linalg": _module("numpy.linalg", "/v/lib/python3.11/site-packages/numpy/linalg/__init__.py"),
        "json": _module("json", "/usr/lib/python3.11/json/__init__.py"),  # stdlib: cheap, not sent
        "ipykernel": _module("ipykernel", "/v/lib/python3.11/site-packages/ipykernel/__init__.py"),
        "_private": _module("_private", "/v/lib/python3.11/site-packages/_private.py"),
        "builtin_thing": _module("builtin_thing", None),
    }
    assert warm.follow_imports(z, mods) == ["numpy"]
    assert warm.follow_imports(z, mods) == []  # already there
    mods["pandas"] = _module("pandas", "/v/lib/python3.11/dist-packages/pandas/__init__.py")
    assert warm.follow_imports(z, mods) == ["pandas"]
    assert z.asked == [["numpy"], ["pandas"]]
    warm._preloaded.clear()


def test_pool_key_depends_on_every_option() -> None:
    a = warm.WarmPool.key({"image": "host", "memory": "256M", "cpus": None})
    b = warm.WarmPool.key({"image": "host", "memory": "512M", "cpus": None})
    c = warm.WarmPool.key({"cpus": None, "memory": "256M", "image": "host"})
    assert a != b and a == c
