"""A forked child that drops to uid/gid 65534 (nobody) and reports back through a pipe:
for tests where another user must be on the far side of a socket."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

NOBODY = 65534


@contextlib.contextmanager
def as_nobody(fn: Callable[[int], None]) -> Iterator[BinaryIO]:
    """Run ``fn(w)`` in a child as nobody; ``w`` is a pipe whose other end is
    yielded (read it for what the child says). On leaving, the child is
    reaped and must have exited 0 (an exception in ``fn`` is written to the
    pipe first, prefixed "error")."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            fn(w)
            code = 0
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.write(w, f"error {e!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    f = os.fdopen(r, "rb")
    try:
        yield f
    finally:
        f.close()
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child as nobody failed"
