"""Running a notebook cell's code inside a container, with its outputs
coming back as real outputs of the cell.

Two halves talk over one pipe of length-prefixed pickled events:

* :func:`cell_main` runs in the container's (single-threaded) process. It
  executes the cell like IPython would (the last expression is displayed),
  routes ``display()``, rich reprs and matplotlib figures into ``display``
  events, and at the end sends the requested output variables (pickled with
  cloudpickle) or the exception with its formatted traceback.
* :class:`CellEvents` runs in the notebook kernel's main thread: it reads the
  event pipe and the stdout/stderr pipes together, so text and displays
  appear live and in order.

The child never touches the kernel's ZMQ sockets, threads or event loop: the
forked copy of the shell gets a display publisher that writes to the pipe.
"""

from __future__ import annotations

import ast
import contextlib
import linecache
import os
import pickle
import selectors
import struct
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

_HEADER = struct.Struct("!I")
CELL_FILENAME = "<container-cell>"


# -- framing ---------------------------------------------------------------------


def send_event(fd: int, kind: str, payload: Any) -> None:
    """Write one event; blocking, whole, so events never interleave."""
    import cloudpickle

    data = cloudpickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(_HEADER.pack(len(data)) + data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Reader:
    """Reassembles events from non-blocking reads of the event pipe."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[str, Any]]:
        self.buf += chunk
        events = []
        while len(self.buf) >= _HEADER.size:
            (n,) = _HEADER.unpack_from(self.buf)
            if len(self.buf) < _HEADER.size + n:
                break
            data = bytes(self.buf[_HEADER.size : _HEADER.size + n])
            del self.buf[: _HEADER.size + n]
            events.append(pickle.loads(data))
        return events


# -- child side ------------------------------------------------------------------------


class _PipePublisher:
    """Stands in for IPython's DisplayPublisher inside the container."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def publish(self, data: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
                source: Any = None, *, transient: Any = None, update: bool = False, **_: Any) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        send_event(self.fd, "display", {"data": dict(data), "metadata": dict(metadata or {}),
                                        "transient": transient, "update": update})

    def clear_output(self, wait: bool = False) -> None:
        send_event(self.fd, "clear", {"wait": wait})


def _install_display(fd: int) -> Callable[[Any], None]:
    """Route display() to the event pipe; returns a function that displays one object."""
    publisher = _PipePublisher(fd)
    try:
        from IPython.core.interactiveshell import InteractiveShell

        if InteractiveShell.initialized():
            shell = InteractiveShell.instance()
        else:
            shell = InteractiveShell.instance()  # a plain shell: formatters work without a kernel
        shell.display_pub = publisher  # type: ignore[assignment]
        formatter = shell.display_formatter
        assert formatter is not None

        def show(obj: Any) -> None:
            data, metadata = formatter.format(obj)
            publisher.publish(data, metadata)

        return show
    except ImportError:  # no IPython in this image: plain text only

        def show_text(obj: Any) -> None:
            publisher.publish({"text/plain": repr(obj)})

        return show_text


def figure_bundle(fig: Any) -> dict[str, str]:
    """A display bundle (PNG, base64, as Jupyter stores it) for a matplotlib figure."""
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return {"image/png": base64.b64encode(buf.getvalue()).decode("ascii"), "text/plain": repr(fig)}


def _flush_figures() -> None:
    """Display and close every open matplotlib figure, as the inline backend does."""
    if "matplotlib.pyplot" in sys.modules:
        from pycontain.notebook import mpl_backend

        mpl_backend.flush()


def _use_pipe_backend(fd: int) -> None:
    """Make matplotlib render with Agg and show figures through the event pipe."""
    backend = "module://pycontain.notebook.mpl_backend"
    if "matplotlib" in sys.modules:
        from pycontain.notebook import mpl_backend

        mpl_backend.EVENT_FD = fd
        try:
            import matplotlib

            matplotlib.use(backend, force=True)
        except Exception:  # pragma: no cover - a broken matplotlib must not hide the cell
            pass
    else:
        # Not imported yet: pick the backend for when the cell imports it,
        # and record the fd where the backend will look for it.
        os.environ["MPLBACKEND"] = backend
        os.environ["PYCONTAIN_EVENT_FD"] = str(fd)


def _run_code(code: str, namespace: dict[str, Any], show: Callable[[Any], None]) -> None:
    """Execute like IPython: the value of a final expression is displayed."""
    linecache.cache[CELL_FILENAME] = (len(code), None, code.splitlines(True), CELL_FILENAME)
    tree = ast.parse(code, CELL_FILENAME, "exec")
    last = None
    final = tree.body[-1] if tree.body else None
    if isinstance(final, ast.Expr) and not code.rstrip().endswith(";"):
        tree.body.pop()
        last = ast.Expression(final.value)
    exec(compile(tree, CELL_FILENAME, "exec"), namespace)
    if last is not None:
        value = eval(compile(last, CELL_FILENAME, "eval"), namespace)
        if value is not None:
            show(value)


def _format_error(exc: BaseException) -> dict[str, Any]:
    tb = exc.__traceback__
    # Drop pycontain's own frames: the user wants to see their cell.
    while tb is not None and tb.tb_frame.f_code.co_filename != CELL_FILENAME:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)
    return {"ename": type(exc).__name__, "evalue": str(exc), "traceback": "".join(lines)}


def cell_main(code: str, inputs: bytes | None, outputs: Iterable[str], event_fd: int,
              namespace: dict[str, Any] | None = None) -> int:
    """Run ``code`` here (inside the container); report on ``event_fd``.

    ``inputs`` is a cloudpickled dict of variables; ``namespace`` (snapshot
    mode) is the notebook's own namespace, already copied by fork. Returns
    the exit status: 0 on success, 1 if the cell raised.
    """
    show = _prepare_process(event_fd)
    ns: dict[str, Any] = namespace if namespace is not None else {"__name__": "__main__"}
    ns.setdefault("display", _display_many(show))
    return _run_one(code, inputs, outputs, event_fd, ns, show)


def _prepare_process(event_fd: int) -> Callable[[Any], None]:
    import io

    # Fresh, unbuffered-by-line text streams on the pipes the engine set up:
    # the forked kernel's sys.stdout would send to the kernel's sockets.
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True, write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True, write_through=True)
    show = _install_display(event_fd)
    _use_pipe_backend(event_fd)
    return show


def _run_one(code: str, inputs: bytes | None, outputs: Iterable[str], event_fd: int, ns: dict[str, Any],
             show: Callable[[Any], None], stop: _StopButton | None = None) -> int:
    if inputs:
        ns.update(pickle.loads(inputs))
    status = 0
    try:
        if stop is None:
            _run_code(code, ns, show)
            _flush_figures()
        else:
            with stop.armed():
                _run_code(code, ns, show)
                _flush_figures()
    except BaseException as exc:  # the user's error, reported as the cell's error
        status = 1
        sys.stdout.flush()
        sys.stderr.flush()
        send_event(event_fd, "error", _format_error(exc))
    else:
        sent, failed = _pickle_outputs(ns, outputs)
        send_event(event_fd, "outputs", {"values": sent, "failed": failed})
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def cell_server(request_fd: int, event_fd: int) -> int:
    """A persistent container's workload: run cells sent on ``request_fd`` one
    after the other in one namespace, so state lives on across cells. Each
    request is ``(code, inputs, outputs[, sys_path])``; each cell ends with a ``done``
    event. Returns when the request pipe closes."""
    import signal as _signal

    # The notebook's stop button arrives as SIGINT: a KeyboardInterrupt in
    # the cell, which ends the cell but keeps the namespace (and the server).
    # Set first: until here SIGINT is ignored (handles_sigint, below).
    stop = _StopButton()
    _signal.signal(_signal.SIGINT, stop.handler)
    show = _prepare_process(event_fd)
    ns: dict[str, Any] = {"__name__": "__main__", "display": _display_many(show)}
    reader = _Reader()
    while True:
        chunk = os.read(request_fd, 1 << 16)
        if not chunk:
            return 0
        for kind, payload in reader.feed(chunk):
            if kind != "cell":
                continue
            code, inputs, outputs = payload[:3]
            if len(payload) > 3 and payload[3] is not None:
                # The kernel's import path now (a forked zygote has the one of
                # its start): sys.path.append("src") in the notebook works here too.
                sys.path[:] = payload[3]
            status = _run_one(code, inputs, outputs, event_fd, ns, show, stop)
            send_event(event_fd, "done", status)


#: The container's PID 1 starts this workload with SIGINT ignored (see
#: pycontain.container._container_init); it sets its own handler first thing.
cell_server.handles_sigint = True  # type: ignore[attr-defined]


class _StopButton:
    """SIGINT in a persistent container's cell server.

    One press of the notebook's stop button reaches the cell as several
    SIGINTs within milliseconds: the kernel's whole process group gets it
    (this process and the container's PID 1, which passes it on), and the
    magic sends one more. Raised on each, a second KeyboardInterrupt would
    cut through the server's own bookkeeping (the error and ``done``
    events, half-written) and end the server, losing the container's state.
    So: a KeyboardInterrupt only while the user's code runs, and one per
    press (copies within ``SAME_PRESS_S`` of the last are dropped). A later
    press still interrupts a cell that caught the first one.
    """

    SAME_PRESS_S = 0.5

    def __init__(self) -> None:
        self._armed = False
        self._last = float("-inf")

    def handler(self, signum: int, frame: Any) -> None:
        import time

        now = time.monotonic()
        if not self._armed or now - self._last < self.SAME_PRESS_S:
            return
        self._last = now
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


def send_request(fd: int, code: str, inputs: bytes | None, outputs: Iterable[str],
                 sys_path: list[str] | None = None) -> None:
    """Ask a :func:`cell_server` to run one cell (with ``sys_path`` as its import path, if given)."""
    send_event(fd, "cell", (code, inputs, list(outputs), sys_path))


def _display_many(show: Callable[[Any], None]) -> Callable[..., None]:
    def display(*objs: Any, **_: Any) -> None:
        for obj in objs:
            show(obj)

    return display


def _pickle_outputs(ns: Mapping[str, Any], names: Iterable[str]) -> tuple[bytes, dict[str, str]]:
    import cloudpickle

    values: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in names:
        if name not in ns:
            failed[name] = "not defined in the cell"
            continue
        try:
            cloudpickle.dumps(ns[name])
        except Exception as e:
            failed[name] = f"cannot be pickled: {type(e).__name__}: {e}"
            continue
        values[name] = ns[name]
    return cloudpickle.dumps(values), failed


def pickle_inputs(ns: Mapping[str, Any], names: Iterable[str]) -> tuple[bytes, dict[str, str]]:
    """Pickle the notebook variables ``names`` for :func:`cell_main`.

    Returns the blob and ``{name: why}`` for the ones that could not go.
    """
    return _pickle_outputs(ns, names)


# -- kernel side --------------------------------------------------------------------------


class StopButton:
    """The notebook's stop button (SIGINT) in the kernel while ``%%container`` runs.

    Starting and removing a container are many steps (cgroup, layers, state
    records, the zygote's protocol); a KeyboardInterrupt raised half-way
    through one would leave pieces behind. While a ``StopButton`` is active
    (``with StopButton():``, in the kernel's main thread), a press is held,
    and becomes a KeyboardInterrupt only where the magic handles it: while
    :meth:`CellEvents.pump` waits for the cell's output (at once), at
    :func:`check_stop`, or when the ``with`` block ends. Elsewhere (another
    thread, a host without signals there) it does nothing: presses raise as
    usual.
    """

    def __init__(self) -> None:
        self.pressed = False
        self._armed = False
        self._previous: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: Any) -> None:
        if self._armed:
            self.pressed = False
            raise KeyboardInterrupt
        self.pressed = True

    def __enter__(self) -> StopButton:
        import signal
        import threading

        global _active_stop
        if _active_stop is None and threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not None:  # None: a handler not set from Python, which we could not restore
                self._previous = signal.signal(signal.SIGINT, self._handler)
                self._installed = True
                _active_stop = self
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        import signal

        global _active_stop
        if not self._installed:
            return
        signal.signal(signal.SIGINT, self._previous)
        self._installed = False
        _active_stop = None
        if self.pressed and exc_type is None:
            self.pressed = False
            raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt for a press held so far."""
        if self.pressed:
            self.pressed = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        """A block where a press raises at once (a held one first)."""
        self.check()
        self._armed = True
        try:
            yield
        finally:
            self._armed = False


_active_stop: StopButton | None = None


def check_stop() -> None:
    """Raise KeyboardInterrupt if the stop button was pressed while held (see :class:`StopButton`)."""
    if _active_stop is not None:
        _active_stop.check()


def _armed_stop() -> contextlib.AbstractContextManager[None]:
    return _active_stop.armed() if _active_stop is not None else contextlib.nullcontext()


class CellEvents:
    """Pump a running cell's stdout, stderr and events until all three close.

    ``on_stdout``/``on_stderr`` get text, ``on_event`` gets ``(kind, payload)``;
    ``on_tick`` is called at least every ``tick`` seconds (for the live
    monitor) from the same, calling thread.
    """

    def __init__(self, stdout_fd: int, stderr_fd: int, event_fd: int) -> None:
        self.fds = {stdout_fd: "stdout", stderr_fd: "stderr", event_fd: "event"}
        self.reader = _Reader()

    def pump(self, on_stdout: Callable[[str], None], on_stderr: Callable[[str], None],
             on_event: Callable[[str, Any], None], on_tick: Callable[[], None] | None = None,
             tick: float = 0.25, until: Callable[[], bool] | None = None) -> None:
        """Dispatch output and events until every pipe closed, or ``until()``
        is true (then what is already in the pipes is still delivered)."""
        import codecs

        decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in ("stdout", "stderr")}
        sel = selectors.DefaultSelector()
        try:
            for fd, name in self.fds.items():
                os.set_blocking(fd, False)
                sel.register(fd, selectors.EVENT_READ, name)
            open_fds = set(self.fds)
            while open_fds:
                if until is not None and until():
                    self._drain(open_fds, decoders, on_stdout, on_stderr, on_event)
                    return
                # Waiting is the one place where the stop button may cut in.
                with _armed_stop():
                    ready = sel.select(timeout=tick)
                for key, _ in ready:
                    fd = int(key.fd)
                    try:
                        chunk = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(fd)
                        open_fds.discard(fd)
                        continue
                    if key.data == "event":
                        for kind, payload in self.reader.feed(chunk):
                            on_event(kind, payload)
                    elif key.data == "stdout":
                        on_stdout(decoders["stdout"].decode(chunk))
                    else:
                        on_stderr(decoders["stderr"].decode(chunk))
                if on_tick is not None:
                    on_tick()
        finally:
            sel.close()


    def _drain(self, open_fds: set[int], decoders: dict[str, Any], on_stdout: Callable[[str], None],
               on_stderr: Callable[[str], None], on_event: Callable[[str, Any], None]) -> None:
        # The child flushed its streams before its last event: whatever it
        # wrote is in the pipes now; read without waiting.
        for fd in list(open_fds):
            name = self.fds[fd]
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                if name == "event":
                    for kind, payload in self.reader.feed(chunk):
                        on_event(kind, payload)
                elif name == "stdout":
                    on_stdout(decoders["stdout"].decode(chunk))
                else:
                    on_stderr(decoders["stderr"].decode(chunk))


class RemoteCellError(Exception):
    """The cell raised inside the container; shows the container's traceback."""

    def __init__(self, ename: str, evalue: str, tb: str) -> None:
        super().__init__(f"{ename}: {evalue}")
        self.ename = ename
        self.evalue = evalue
        self.remote_traceback = tb

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a local traceback (InteractiveShell.showtraceback).
        return self.remote_traceback.rstrip("\n").splitlines()


def format_failed(failed: Mapping[str, str], direction: str) -> str:
    """One clear message naming the variables that could not cross."""
    parts = [f"{name} ({why})" for name, why in failed.items()]
    return f"pycontain: could not send {direction}: " + "; ".join(parts)


def print_exception_text(exc: BaseException) -> str:  # pragma: no cover - debugging aid
    return "".join(traceback.format_exception(exc))
