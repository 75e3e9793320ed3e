"""Fresh containers for ``%%container`` cells, without waiting for them.

A cell without ``--snapshot`` needs none of the kernel's memory, only its
code and its ``--in`` variables. So it runs in a container forked from the
*cell zygote* (:func:`cell_zygote`): a helper process, started once per
kernel, that has imported IPython (with a shell, see
:mod:`pycontain.notebook.cell_shell`), cloudpickle, pycontain's cell code
and the packages the kernel itself imported (:func:`follow_imports`). The
cost of a cell no longer grows with the kernel's size.

And while the user reads a cell's output, containers for the next cells are
already started with the same options (:class:`WarmPool`, two of them), and
wait for their code in :func:`pycontain.notebook.cell.cell_server`: a trivial
cell then costs little more than a plain one. Each cell still gets its own
container and a fresh writable layer, thrown away when the cell ends; the
waiting containers are removed when the kernel exits (or ``%container warm off``).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Iterable
from typing import Any

from pycontain.notebook.cell import CellEvents

__all__ = ["CellContainer", "WarmPool", "cell_zygote", "follow_imports", "start_cell_container"]

#: Modules the cell zygote imports when it starts.
_PRELOAD = (
    "cloudpickle",
    "pycontain.notebook.cell_shell",
    "pycontain.notebook.cell",
    "pycontain.notebook.mpl_backend",
)

#: Top-level packages of the kernel's own machinery: never preloaded into the
#: zygote (they would open sockets or threads, or only cost time).
_KERNEL_MACHINERY = frozenset({
    "IPython", "ipykernel", "ipywidgets", "jupyter_client", "jupyter_core", "zmq", "tornado", "traitlets",
    "comm", "debugpy", "matplotlib_inline", "prompt_toolkit", "pygments", "jedi", "parso", "pexpect",
    "ptyprocess", "psutil", "nest_asyncio", "pycontain", "pytest", "_pytest", "pluggy", "nbval", "nbclient",
    "nbformat", "widgetsnbextension", "jupyterlab_widgets", "executing", "asttokens", "stack_data",
    "pure_eval", "wcwidth", "decorator", "platformdirs", "dateutil", "tzdata", "packaging", "six",
})

_zygote: Any = None
_zygote_lock = threading.Lock()
_preloaded: set[str] = set()
_last_scan: tuple[Any, int] | None = None  # (zygote, number of modules) when follow_imports last looked


def cell_zygote() -> Any:
    """The kernel's cell zygote, started on first use (and again if it died)."""
    global _zygote
    from pycontain.container import _ZYGOTE_PRELOAD, ZYGOTE_CLEANUP
    from pycontain.engine import Zygote

    with _zygote_lock:
        z = _zygote
        if z is None or z._closed or z._dead or z._owner != os.getpid():
            # A kernel that is killed (nbval, a crashed kernel) leaves its
            # waiting containers behind: the zygote collects them then.
            z = _zygote = Zygote(preload=(*_PRELOAD, *_ZYGOTE_PRELOAD), cleanup=ZYGOTE_CLEANUP)
            _preloaded.clear()
        return z


_pools: list[WarmPool] = []


@atexit.register
def _at_exit() -> None:
    """Remove the waiting containers first, then stop the zygote that forked them."""
    for pool in list(_pools):
        try:
            pool.close()
        except Exception:
            pass
    z = _zygote
    if z is not None and z._owner == os.getpid():
        z.close()


def _site_packages(module: Any) -> bool:
    path = getattr(module, "__file__", None) or ""
    return "site-packages" in path or "dist-packages" in path


def follow_imports(zygote: Any, modules: dict[str, Any] | None = None) -> list[str]:
    """Preload into ``zygote`` the third-party packages the kernel has imported
    since the last call (numpy, pandas, ...), so cells find them loaded.

    Returns the names sent. Packages that fail to import there are
    remembered and not tried again.
    """
    global _last_scan
    modules = sys.modules if modules is None else modules
    # Most cells import nothing new: then the scan (a thousand modules, on
    # every cell's path) is skipped.
    if _last_scan is not None and _last_scan[0] is zygote and _last_scan[1] == len(modules):
        return []
    _last_scan = (zygote, len(modules))
    wanted = sorted({name for name, mod in list(modules.items())
                     if mod is not None and "." not in name and not name.startswith("_")
                     and name not in _KERNEL_MACHINERY and _site_packages(mod)} - _preloaded)
    if not wanted:
        return []
    _preloaded.update(wanted)
    zygote.preload(wanted)
    return wanted


class CellContainer:
    """A started container whose :func:`cell_server` waits for one cell."""

    def __init__(self, container: Any, request_w: int, event_r: int, stdout_r: int, stderr_r: int) -> None:
        self.container = container
        self.request_w: int | None = request_w
        self.events = CellEvents(stdout_r, stderr_r, event_r)
        self._fds = [event_r, stdout_r, stderr_r]

    def close_requests(self) -> None:
        """No more cells: the server ends after the current one (idempotent)."""
        if self.request_w is not None:
            fd, self.request_w = self.request_w, None
            try:
                os.close(fd)
            except OSError:
                pass

    def remove(self) -> None:
        """Close the pipes and remove the container (idempotent)."""
        self.close_requests()
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.container.remove(force=True)


def start_cell_container(options: dict[str, Any], zygote: Any | None = None, *,
                         from_caller: bool = False) -> CellContainer:
    """Start a container (``Container(**options)``) running a cell server
    forked from ``zygote`` (default: :func:`cell_zygote`), or from the
    caller itself with ``from_caller=True`` (``%%container --name``)."""
    from pycontain.container import Container
    from pycontain.notebook.cell import cell_server

    container = Container(**options)
    req_r, req_w = os.pipe2(os.O_CLOEXEC)
    ev_r, ev_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        container.start_python(cell_server, (req_r, ev_w), stdout=out_w, stderr=err_w,
                               pass_fds=(req_r, ev_w),
                               zygote=None if from_caller else (zygote or cell_zygote()))
    except BaseException:
        for fd in (req_w, ev_r, out_r, err_r):
            os.close(fd)
        container.remove(force=True)
        raise
    finally:
        for fd in (req_r, ev_w, out_w, err_w):
            os.close(fd)
    return CellContainer(container, req_w, ev_r, out_r, err_r)


class WarmPool:
    """Started cell containers waiting for a cell, for the options of the last one.

    :meth:`take` hands one out at once when the options match; :meth:`refill`
    queues the finished container for removal and asks for the pool to be
    topped up to ``depth``. One background worker does both, starting the
    new containers before it removes old ones. Two waiting containers let
    cells run back to back ("Run All") without waiting for a start. Failures
    in the worker are silent: a cell that finds none ready starts its
    container itself and reports the error.
    """

    depth = 2

    def __init__(self) -> None:
        self.enabled = True
        self._cond = threading.Condition()
        self._ready: list[tuple[tuple[Any, ...], CellContainer]] = []
        self._finished: list[CellContainer] = []
        self._want: tuple[tuple[Any, ...], dict[str, Any], Any] | None = None
        self._thread: threading.Thread | None = None
        self._owner = os.getpid()
        _pools.append(self)

    @staticmethod
    def key(options: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(sorted((k, repr(v)) for k, v in options.items()))

    def take(self, options: dict[str, Any]) -> CellContainer | None:
        """A waiting container started with ``options`` (waiting for one being
        started for them, if none is ready yet); None if there is none."""
        key = self.key(options)
        with self._cond:
            while True:
                for i, (k, cell) in enumerate(self._ready):
                    if k == key:
                        del self._ready[i]
                        if cell.container.status == "running":
                            return cell
                        self._finished.append(cell)
                        break
                else:
                    starting = self._thread is not None and self._want is not None and self._want[0] == key
                    if not starting:
                        return None
                    self._cond.wait(timeout=5)
                    if self._thread is None:
                        return None
                    continue

    def refill(self, options: dict[str, Any], zygote: Any | None = None, *, finished: CellContainer | None = None,
               wait: bool = False) -> None:
        """Remove ``finished`` (a cell's container whose cell is done) and keep
        ``depth`` containers with ``options`` waiting, in the background (or
        now, with ``wait=True``). When the pool is off, only the removal."""
        wait = wait or not self.enabled  # off: the cell's container is gone when the cell ends
        with self._cond:
            if finished is not None:
                self._finished.append(finished)
            key = self.key(options)
            self._want = (key, dict(options), zygote) if self.enabled else None
            # Waiting containers for other options will not be taken: let them go.
            keep = [(k, c) for k, c in self._ready if k == key]
            self._finished.extend(c for k, c in self._ready if k != key)
            self._ready = keep
            if self._thread is None and not wait:
                self._thread = threading.Thread(target=self._work, name="pycontain-warm-cell", daemon=True)
                self._thread.start()
        if wait:
            self._work()

    def _work(self) -> None:
        try:
            while True:
                with self._cond:
                    want = self._want
                    need = want is not None and self.enabled and \
                        sum(1 for k, _ in self._ready if k == want[0]) < self.depth
                    old = [] if need else self._finished[:]
                    if not need:
                        self._finished.clear()
                    if not need and not old:
                        # Decided under the lock: a refill() from now on starts a new worker.
                        if self._thread is threading.current_thread():
                            self._thread = None
                        self._cond.notify_all()
                        return
                if need:
                    assert want is not None
                    try:
                        cell = start_cell_container(want[1], want[2])
                    except Exception:
                        with self._cond:
                            self._want = None  # no retry loop on a host that cannot start it
                        continue
                    with self._cond:
                        self._ready.append((want[0], cell))
                        self._cond.notify_all()
                    continue
                for cell in old:
                    cell.close_requests()
                    try:
                        cell.container.wait(timeout=5)
                    except Exception:
                        pass  # remove() below kills what is left
                    try:
                        cell.remove()
                    except Exception:
                        pass
        finally:
            with self._cond:
                if self._thread is threading.current_thread():
                    self._thread = None
                self._cond.notify_all()

    def _join(self) -> None:
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def close(self) -> None:
        """Remove every waiting container (idempotent; also at exit)."""
        if os.getpid() != self._owner:
            return
        with self._cond:
            self._want = None
        self._join()
        with self._cond:
            cells = [c for _, c in self._ready] + self._finished
            self._ready, self._finished = [], []
        for cell in cells:
            try:
                cell.remove()
            except Exception:
                pass


def warm_names(pool: WarmPool) -> Iterable[str]:
    """Names of the containers the pool keeps waiting (for listings)."""
    return [c.container.name for _, c in list(pool._ready)]
