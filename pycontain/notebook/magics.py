"""``%%container``: run a cell's Python code inside a container.

The magic is thin (DESIGN.md §6): it parses its options, calls the public
API (:class:`pycontain.Container`), and shows what comes back -- output and
displays live and in order, the exception as the cell's error, a one-line
summary, and a live plot of memory and CPU while the cell runs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from pycontain.errors import PycontainError
from pycontain.notebook.cell import CellEvents, RemoteCellError, cell_main, format_failed, pickle_inputs
from pycontain.notebook.live import MONITOR_TICK_S, LiveView
from pycontain.units import format_size


def _names(value: str | None, option: str) -> list[str]:
    if not value:
        return []
    names = [n.strip() for n in value.split(",") if n.strip()]
    for n in names:
        if not n.isidentifier():
            raise UsageError(f"{option}: {n!r} is not a variable name")
    return names


@magics_class
class ContainerMagics(Magics):
    """The pycontain magics: ``%%container``, ``%container stop NAME``, ``%container warm on|off``,
    ``%containers``."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        #: persistent containers started with --name, by name
        self.persistent: dict[str, Any] = {}

    @magic_arguments()
    @argument("--image", default="host", help="image tag, or 'host' (the host's root, copy-on-write)")
    @argument("--memory", default=None, help="memory limit, e.g. 256M")
    @argument("--cpus", default=None, help="CPU limit as a number of CPUs, e.g. 0.5")
    @argument("--pids", default=None, help="limit on the number of processes")
    @argument("--net", default="none", help="network: none (default), bridge or host")
    @argument("--in", dest="inputs", default=None, help="variables to send in, comma separated")
    @argument("--out", dest="outputs", default=None, help="variables to bring back, comma separated")
    @argument("--snapshot", action="store_true", help="the cell sees every notebook variable, copy-on-write")
    @argument("--name", default=None, help="keep a persistent container of this name across cells")
    @argument("--timeout", type=float, default=None, help="stop the cell after this many seconds")
    @argument("--stats", default=None, help="store the usage DataFrame in this variable")
    @argument("--monitor", dest="monitor", action="store_true", default=None, help="always show the live plot")
    @argument("--no-monitor", dest="monitor", action="store_false", help="never show the live plot")
    @argument("--quiet", action="store_true", help="no summary line")
    @argument("rest", nargs="*", help="with no cell: 'stop NAME', 'ls' or 'warm on|off'")
    @line_cell_magic
    def container(self, line: str, cell: str | None = None) -> Any:
        """Run the cell inside a container (see ``%%container?``)."""
        args = parse_argstring(self.container, line)
        if cell is None:
            return self._line_command(args.rest)
        if args.rest:
            raise UsageError(f"unexpected arguments: {' '.join(args.rest)}")
        from pycontain.notebook.cell import StopButton

        # The stop button ends the running cell; it does not cut the
        # container's start or removal in half (see StopButton).
        with StopButton():
            return run_cell(self.shell, cell, args, self.persistent)

    @line_magic
    def containers(self, line: str = "") -> Any:
        """The containers pycontain knows, as a DataFrame."""
        import pycontain

        return pycontain.containers()

    def _line_command(self, rest: list[str]) -> Any:
        if rest[:1] == ["stop"] and len(rest) == 2:
            name = rest[1]
            c = self.persistent.pop(name, None)
            if c is None:
                raise UsageError(f"no persistent container named {name!r} in this kernel")
            c.remove()
            print(f"stopped {name}")
            return None
        if rest in ([], ["ls"]):
            import pycontain

            return pycontain.containers()
        if rest[:1] == ["warm"] and rest[1:] in (["on"], ["off"]):
            pool = _pool()
            pool.enabled = rest[1] == "on"
            if not pool.enabled:
                pool.close()
            print(f"warm cell containers: {rest[1]}")
            return None
        raise UsageError("usage: %container stop NAME | %container ls | %container warm on|off")


def run_cell(shell: Any, cell: str, args: Any, persistent: dict[str, Any]) -> None:
    """Run ``cell`` per the parsed magic ``args``; the body of ``%%container``."""
    from pycontain.container import Container

    in_names = _names(args.inputs, "--in")
    out_names = _names(args.outputs, "--out")
    missing = [n for n in in_names if n not in shell.user_ns]
    if missing:
        raise UsageError(f"--in: not defined in the notebook: {', '.join(missing)}")
    blob, failed = pickle_inputs(shell.user_ns, in_names)
    if failed:
        raise UsageError(format_failed(failed, "in"))
    if args.name:
        return _run_persistent(shell, cell, args, persistent, blob, out_names)
    if not args.snapshot and len(blob or b"") <= _FRESH_MAX_INPUT_BYTES:
        return _run_fresh(shell, cell, args, blob, out_names)
    try:
        container = Container(**_cell_options(args))
    except PycontainError as e:
        _explain_start_failure(e)
        raise
    stdout_r, stdout_w = os.pipe()
    stderr_r, stderr_w = os.pipe()
    event_r, event_w = os.pipe()
    namespace = shell.user_ns if args.snapshot else None
    t0 = time.monotonic()
    view = LiveView(container, args.monitor)
    outcome: dict[str, Any] = {}
    try:
        try:
            container.start_python(
                cell_main, (cell, blob, out_names, event_w, namespace),
                stdout=stdout_w, stderr=stderr_w, pass_fds=(event_w,),
            )
        except BaseException as e:
            container.remove(force=True)
            _explain_start_failure(e)
            raise
        finally:
            for fd in (stdout_w, stderr_w, event_w):
                os.close(fd)
        view.start()

        on_event = _event_sink(outcome)

        on_tick = _ticker(args, t0, container, view, outcome)

        try:
            CellEvents(stdout_r, stderr_r, event_r).pump(_writer(sys.stdout), _writer(sys.stderr), on_event, on_tick,
                                                         tick=MONITOR_TICK_S)
        except KeyboardInterrupt:
            container.kill()
            outcome["interrupted"] = True
        code = _wait_stoppable(container, outcome)
        view.stop()
    except PycontainError as e:
        container.remove(force=True)
        raise UsageError(str(e)) from None
    finally:
        for fd in (stdout_r, stderr_r, event_r):
            os.close(fd)
    wall = time.monotonic() - t0
    usage = container.usage()
    container.remove(force=True)
    if args.stats:
        shell.user_ns[args.stats] = view.frame()
    _take_outputs(shell, outcome)
    line = _summary(code, wall, usage, outcome)
    if line and (not args.quiet or code != 0):
        print(line, file=sys.stderr if code else sys.stdout)
    if "error" in outcome:
        err = outcome["error"]
        raise RemoteCellError(err["ename"], err["evalue"], err["traceback"])
    if outcome.get("interrupted"):
        raise KeyboardInterrupt


def _take_outputs(shell: Any, outcome: dict[str, Any]) -> None:
    """The --out variables into the notebook; what could not come back is named."""
    if "outputs" in outcome:
        import cloudpickle

        shell.user_ns.update(cloudpickle.loads(outcome["outputs"]["values"]))
        if outcome["outputs"]["failed"]:
            print(format_failed(outcome["outputs"]["failed"], "out"), file=sys.stderr)


def _event_sink(outcome: dict[str, Any]) -> Any:
    """The cell's events: displays and clears go to the notebook, the rest into ``outcome``."""
    def on_event(kind: str, payload: Any) -> None:
        if kind == "display":
            from IPython.display import publish_display_data

            publish_display_data(payload["data"], payload["metadata"])
        elif kind == "clear":
            from IPython.display import clear_output

            clear_output(wait=payload["wait"])
        else:
            outcome[kind] = payload

    return on_event


def _ticker(args: Any, t0: float, container: Any, view: Any, outcome: dict[str, Any]) -> Any:
    """Called from the pump loop: the --timeout (kill once), then the live view."""
    def on_tick() -> None:
        if args.timeout is not None and time.monotonic() - t0 > args.timeout and "timeout" not in outcome:
            outcome["timeout"] = args.timeout
            container.kill()
        view.tick()

    return on_tick


#: --in variables bigger than this (pickled) go by a fork of the kernel,
#: which hands the bytes over without copying them through a pipe.
_FRESH_MAX_INPUT_BYTES = 8 << 20

#: Cells without --snapshot or --name: a container for the next cell is
#: started while the user reads this one's output (see pycontain.notebook.warm).
_POOL: Any = None


def _pool() -> Any:
    global _POOL
    if _POOL is None:
        from pycontain.notebook.warm import WarmPool

        _POOL = WarmPool()
        _POOL.enabled = os.environ.get("PYCONTAIN_WARM_CELLS", "1") != "0"
    return _POOL


def _cell_options(args: Any) -> dict[str, Any]:
    return {"image": args.image, "memory": args.memory, "cpus": args.cpus, "pids": args.pids, "network": args.net}


def _run_fresh(shell: Any, cell: str, args: Any, blob: bytes, out_names: list[str]) -> None:
    """A cell in a fresh container forked from the cell zygote (no --snapshot, no --name).

    The container was usually started in the background after the previous
    cell (same options); it runs one cell and is removed, in the background
    too, while the next one starts.
    """
    from pycontain.notebook import warm
    from pycontain.notebook.cell import check_stop, send_request

    options = _cell_options(args)
    pool = _pool()
    try:
        zygote = warm.cell_zygote()
        warm.follow_imports(zygote)
        cc = pool.take(options)
        if cc is None:
            cc = warm.start_cell_container(options, zygote)
    except PycontainError as e:
        _explain_start_failure(e)
        raise
    container = cc.container
    t0 = time.monotonic()
    cpu0 = container.usage().get("cpu_s", 0.0)
    view = LiveView(container, args.monitor)
    outcome: dict[str, Any] = {}
    try:
        check_stop()
        send_request(cc.request_w, cell, blob, out_names, sys.path[:])
        cc.close_requests()
        view.start()

        on_event = _event_sink(outcome)

        on_tick = _ticker(args, t0, container, view, outcome)

        def finished() -> bool:
            return "done" in outcome or container.status != "running"

        try:
            cc.events.pump(_writer(sys.stdout), _writer(sys.stderr), on_event, on_tick, tick=MONITOR_TICK_S,
                           until=finished)
        except KeyboardInterrupt:
            container.kill()
            outcome["interrupted"] = True
        if "done" in outcome and not outcome.get("interrupted") and "timeout" not in outcome:
            code = int(outcome["done"])
        else:
            code = _wait_stoppable(container, outcome)
        view.stop()
    except BaseException:
        cc.remove()
        raise
    wall = time.monotonic() - t0
    usage = container.usage()
    usage["cpu_s"] = usage.get("cpu_s", 0.0) - cpu0
    # Removing this container and starting the next one happen in the
    # background; the next cell waits for both (WarmPool.take).
    pool.refill(options, zygote, finished=cc)
    if args.stats:
        shell.user_ns[args.stats] = view.frame()
    _take_outputs(shell, outcome)
    line = _summary(code, wall, usage, outcome)
    if line and (not args.quiet or code != 0):
        print(line, file=sys.stderr if code else sys.stdout)
    if "error" in outcome and not outcome.get("interrupted") and "timeout" not in outcome:
        err = outcome["error"]
        raise RemoteCellError(err["ename"], err["evalue"], err["traceback"])
    if outcome.get("interrupted"):
        raise KeyboardInterrupt


def _start_persistent(args: Any) -> Any:
    """The named container of ``--name``: a cell server forked from the kernel,
    whose namespace lives on across cells (a :class:`~pycontain.notebook.warm.CellContainer`)."""
    from pycontain.notebook.warm import start_cell_container

    try:
        return start_cell_container({**_cell_options(args), "name": args.name}, from_caller=True)
    except BaseException as e:
        _explain_start_failure(e)
        raise


def _run_persistent(shell: Any, cell: str, args: Any, persistent: dict[str, Any], blob: bytes,
                    out_names: list[str]) -> None:
    import signal

    from pycontain.notebook.cell import check_stop, send_request

    p = persistent.get(args.name)
    if p is not None and p.container.status != "running":
        p.remove()
        p = None
        persistent.pop(args.name, None)
    if p is None:
        p = persistent[args.name] = _start_persistent(args)
    container = p.container
    t0 = time.monotonic()
    cpu0 = container.usage().get("cpu_s", 0.0)
    outcome: dict[str, Any] = {}
    # Pressed while the container started: don't start the cell at all (a
    # cell server not yet in the cell would drop the press).
    check_stop()
    send_request(p.request_w, cell, blob, out_names)
    on_event = _event_sink(outcome)

    interrupted_at: list[float] = []

    def on_tick() -> None:
        now = time.monotonic()
        if args.timeout is not None and now - t0 > args.timeout and "timeout" not in outcome:
            outcome["timeout"] = args.timeout
            container.kill("INT")
            interrupted_at.append(now)
        if interrupted_at and now - interrupted_at[0] > 3 and container.status == "running":
            container.kill()  # it ignored SIGINT: end it

    def finished() -> bool:
        return "done" in outcome or container.status != "running"

    try:
        p.events.pump(_writer(sys.stdout), _writer(sys.stderr), on_event, on_tick, until=finished)
    except KeyboardInterrupt:
        # The stop button: interrupt the cell inside, keep the container.
        container.kill(signal.SIGINT)
        outcome["interrupted"] = True
        try:
            p.events.pump(_writer(sys.stdout), _writer(sys.stderr), on_event, on_tick, until=finished)
        except KeyboardInterrupt:
            container.kill()
    usage = container.usage()
    usage["cpu_s"] = usage.get("cpu_s", 0.0) - cpu0
    wall = time.monotonic() - t0
    code = 0 if outcome.get("done") == 0 else 1
    if container.status != "running":
        code = container.wait()
        persistent.pop(args.name, None)
        p.remove()
    _take_outputs(shell, outcome)
    line = _summary(code, wall, usage, outcome)
    if line and (not args.quiet or code != 0):
        print(line.replace("container:", f"container {args.name}:", 1), file=sys.stderr if code else sys.stdout)
    if "error" in outcome and not outcome.get("interrupted") and "timeout" not in outcome:
        err = outcome["error"]
        raise RemoteCellError(err["ename"], err["evalue"], err["traceback"])
    if outcome.get("interrupted"):
        raise KeyboardInterrupt


def _wait_stoppable(container: Any, outcome: dict[str, Any]) -> int:
    """Wait for the container once the cell's output pipes closed: at once,
    usually; but a cell can close its output and go on, and the stop button
    must still end it."""
    from pycontain.errors import Timeout
    from pycontain.notebook.cell import check_stop

    while True:
        try:
            return int(container.wait(timeout=0.1))
        except Timeout:
            pass
        try:
            check_stop()
        except KeyboardInterrupt:
            container.kill()
            outcome["interrupted"] = True
            return int(container.wait())


def _explain_start_failure(error: BaseException) -> None:
    """A host that cannot isolate (not root, seccomp refusing unshare/mount,
    as on Binder) gets one clear message that points at doctor(), not a
    kernel error from deep inside."""
    from pycontain.errors import PermissionDenied

    if isinstance(error, PermissionDenied) or (isinstance(error, PycontainError)
                                               and getattr(error, "errno", None) in (1, 13)):
        raise UsageError(
            "pycontain cannot make a container on this host: "
            f"{getattr(error, 'message', str(error))} ({getattr(error, 'op', None) or 'setup'} was refused). "
            "Run pycontain.doctor() to see what this host can isolate and why not."
        ) from None
    if isinstance(error, PycontainError):
        raise UsageError(str(error)) from None


def _writer(stream: Any) -> Any:
    def write(text: str) -> None:
        stream.write(text)
        stream.flush()

    return write


def _summary(code: int, wall: float, usage: dict[str, Any], outcome: dict[str, Any]) -> str:
    peak = usage.get("mem_peak_bytes")
    peak_s = format_size(int(peak)) if peak == peak and peak is not None else "?"
    cpu = usage.get("cpu_s")
    cpu_s = f"{cpu:.2f} s CPU" if cpu == cpu and cpu is not None else "? CPU"
    if usage.get("oom_killed"):
        return f"OOM: killed at {peak_s} (peak), {cpu_s}, after {wall:.1f} s"
    if "timeout" in outcome:
        return f"timeout: stopped after {outcome['timeout']:g} s, peak {peak_s}, {cpu_s}"
    if outcome.get("interrupted"):
        return f"interrupted: container stopped after {wall:.1f} s, peak {peak_s}, {cpu_s}"
    return f"container: {wall:.2f} s wall, {cpu_s}, peak {peak_s}, exit {code}"


def register(ipython: Any) -> None:
    """Register the magics with an IPython shell (``%load_ext pycontain``).

    The first cell's container is started in the background at once (with
    the default options), so it is ready when that cell runs.
    """
    ipython.register_magics(ContainerMagics)
    if os.geteuid() == 0:
        _pool().refill({"image": "host", "memory": None, "cpus": None, "pids": None, "network": "none"})
