"""pycontain: Linux containers from the kernel's own parts, made for notebooks.

``import pycontain`` is deliberately light: it starts no thread and imports
neither pandas nor IPython. Public names are resolved on first use (PEP 562),
so the engine process, which imports this package too, starts fast.

Quick tour::

    import pycontain
    pycontain.doctor()                      # what this host can do, and why not
    pycontain.namespaces()                  # every namespace, like lsns
    with pycontain.Cgroup("demo", memory="64M", cpus=0.5) as cg:
        cg.run(["python3", "-c", "print('hi')"])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pycontain.errors import (
    AlreadyExists,
    Busy,
    InvalidArgument,
    KernelError,
    NotFound,
    PermissionDenied,
    PycontainError,
    Timeout,
    Unsupported,
)

__version__ = "0.1.0"

# public name -> module that defines it; imported on first attribute access.
_LAZY: dict[str, str] = {
    # namespaces
    "Namespace": "pycontain.namespace",
    "namespaces": "pycontain.namespace",
    "spawn": "pycontain.namespace",
    # host report
    "doctor": "pycontain.doctor",
    "cgroup_version": "pycontain.doctor",
    # cgroups
    "Cgroup": "pycontain.cgroup",
    "cgroups": "pycontain.cgroup",
    # layers and images
    "Layer": "pycontain.image",
    "Image": "pycontain.image",
    "images": "pycontain.image",
    # containers
    "Container": "pycontain.container",
    "containers": "pycontain.container",
    "run": "pycontain.container",
    # networks
    "Network": "pycontain.network",
    "networks": "pycontain.network",
    # monitoring
    "plot": "pycontain.notebook.plot",
}

__all__ = [
    "__version__",
    "PycontainError",
    "InvalidArgument",
    "KernelError",
    "PermissionDenied",
    "NotFound",
    "AlreadyExists",
    "Busy",
    "Timeout",
    "Unsupported",
    "load_ipython_extension",
    "Namespace",
    "namespaces",
    "spawn",
    "doctor",
    "cgroup_version",
    "Cgroup",
    "cgroups",
    "Layer",
    "Image",
    "images",
    "Container",
    "containers",
    "run",
    "Network",
    "networks",
    "plot",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pycontain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext pycontain``: register the %%container magics."""
    from pycontain.notebook.magics import register

    register(ipython)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from pycontain.cgroup import Cgroup, cgroups
    from pycontain.container import Container, containers, run
    from pycontain.doctor import cgroup_version, doctor
    from pycontain.image import Image, Layer, images
    from pycontain.namespace import Namespace, namespaces, spawn
    from pycontain.network import Network, networks
    from pycontain.notebook.plot import plot
