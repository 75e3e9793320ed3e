"""The engine: single-threaded children that become containers (DESIGN.md §3).

``start(ChildSpec(...))`` forks a child that joins cgroups, joins and
creates namespaces, and execs a program or runs a Python callable; the
caller's own process never changes namespace.

Example::

    from pycontain.engine import ChildSpec, start
    child = start(ChildSpec(argv=["hostname"], new={"uts"}, hostname="box"))
    child.wait()
"""

from pycontain.engine.process import Child, RemoteError, start
from pycontain.engine.spec import ChildSpec
from pycontain.engine.zygote import Zygote, shared_zygote

__all__ = ["Child", "ChildSpec", "RemoteError", "Zygote", "shared_zygote", "start"]
