"""The engine: single-threaded children that become containers (DESIGN.md §3).

``start(ChildSpec(...))`` forks a child that joins cgroups, joins and
creates namespaces, and execs a program or runs a Python callable; the
caller's own process never changes namespace.

Example::

    from pycontain.engine import ChildSpec, start
    child = start(ChildSpec(argv=["hostname"], new={"uts"}, hostname="box"))
    child.wait()
"""

from typing import TYPE_CHECKING, Any

from pycontain.engine.process import Child, RemoteError, start
from pycontain.engine.spec import ChildSpec

if TYPE_CHECKING:
    from pycontain.engine.zygote import Zygote, shared_zygote

__all__ = ["Child", "ChildSpec", "RemoteError", "Zygote", "shared_zygote", "start"]


def __getattr__(name: str) -> Any:
    # The zygote module (and its socket import, ~3 ms) loads on first use:
    # a caller that forks its containers itself (the CLI) never needs it.
    if name in ("Zygote", "shared_zygote"):
        from pycontain.engine import zygote

        return getattr(zygote, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
