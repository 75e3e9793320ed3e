"""The one error hierarchy of pycontain.

Every error derives from :class:`PycontainError` *and* from the builtin a
Python user would catch for that situation (``ValueError`` for bad input,
``OSError``/``PermissionError`` for kernel refusals, ``LookupError`` for
unknown objects, ``TimeoutError``), so ``except ValueError`` keeps working.

Each error carries what went wrong in fields (``op``, ``path``, ``field``,
``value``, ``errno``, ``hint``) and renders them into one readable message,
in the manner of bubblewrap's ``bwrap: Can't mount proc on /newroot/proc:
Operation not permitted``.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any

__all__ = [
    "PycontainError",
    "InvalidArgument",
    "KernelError",
    "PermissionDenied",
    "NotFound",
    "AlreadyExists",
    "Busy",
    "Timeout",
    "Unsupported",
    "kernel_error",
]


def _describe(
    message: str,
    *,
    op: str | None,
    path: str | None,
    field: str | None,
    value: Any,
    err: int | None,
    hint: str | None,
    has_value: bool,
) -> str:
    parts = [message]
    details = []
    if op:
        details.append(f"op={op}")
    if field:
        details.append(f"field={field}")
    if has_value:
        details.append(f"value={value!r}")
    if path:
        details.append(f"path={path}")
    if err is not None:
        details.append(f"errno={_errno.errorcode.get(err, err)} ({os.strerror(err)})")
    if details:
        parts.append(" [" + ", ".join(details) + "]")
    if hint:
        parts.append(f"\n  hint: {hint}")
    return "".join(parts)


_MISSING = object()


class PycontainError(Exception):
    """Base class of every error pycontain raises on purpose.

    Attributes: ``op`` (the operation, e.g. ``"mount"``), ``path``,
    ``field`` (the argument at fault), ``value``, ``errno`` and ``hint``.
    """

    op: str | None
    path: str | None
    field: str | None
    value: Any
    hint: str | None
    filename: Any  # set for the OSError subclasses, like OSError.filename

    def __init__(
        self,
        message: str,
        *,
        op: str | None = None,
        path: str | os.PathLike[str] | None = None,
        field: str | None = None,
        value: Any = _MISSING,
        errno: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.op = op
        self.path = os.fspath(path) if path is not None else None
        self.field = field
        self.value = None if value is _MISSING else value
        self.hint = hint
        text = _describe(
            message,
            op=op,
            path=self.path,
            field=field,
            value=self.value,
            err=errno,
            hint=hint,
            has_value=value is not _MISSING,
        )
        self._text = text
        if isinstance(self, OSError):
            # OSError's own constructor fills .errno/.strerror/.filename.
            OSError.__init__(self, errno or 0, text)
            if self.path is not None:
                self.filename = self.path
        else:
            Exception.__init__(self, text)
            self.errno = errno  # type: ignore[misc]

    def __str__(self) -> str:
        return self._text

    def __reduce__(self) -> Any:
        # Errors cross process boundaries (engine -> caller) by pickle; keep
        # the fields, not only the rendered text.
        state = self.__dict__.copy()
        state["errno"] = self.errno
        if isinstance(self, OSError):
            state["filename"] = self.filename
        return (_rebuild, (type(self), state))


def _rebuild(cls: type[PycontainError], state: dict[str, Any]) -> PycontainError:
    err = cls.__new__(cls)
    state = dict(state)
    err_no = state.pop("errno", None)
    filename = state.pop("filename", None)
    if isinstance(err, OSError):
        OSError.__init__(err, err_no or 0, state.get("_text", ""))
        err.filename = filename
    else:
        Exception.__init__(err, state.get("_text", ""))
        err.errno = err_no  # type: ignore[attr-defined]
    err.__dict__.update(state)
    return err


class InvalidArgument(PycontainError, ValueError):
    """Bad input, rejected before anything touches the kernel."""


class KernelError(PycontainError, OSError):
    """The kernel refused an operation; ``errno`` says why."""


class PermissionDenied(KernelError, PermissionError):
    """EPERM/EACCES from the kernel: usually a missing privilege."""


class NotFound(PycontainError, LookupError):
    """An unknown container, image, cgroup, namespace or network."""


class AlreadyExists(PycontainError, FileExistsError):
    """A name is taken (container, cgroup, network)."""

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.EEXIST)
        super().__init__(message, **kw)


class Busy(KernelError):
    """The object is in use (EBUSY), e.g. a network with containers attached."""


class Timeout(PycontainError, TimeoutError):
    """An operation did not finish in the time allowed."""

    def __init__(self, message: str, **kw: Any) -> None:
        kw.setdefault("errno", _errno.ETIMEDOUT)
        super().__init__(message, **kw)


class Unsupported(PycontainError, NotImplementedError):
    """This host (kernel, cgroup version, privileges) cannot do this."""


_HINTS = {
    _errno.EPERM: "this needs root (or CAP_SYS_ADMIN in the owning user namespace); "
    "run `pycontain doctor` to see what this host allows",
    _errno.EACCES: "permission denied; check ownership and that you are root",
    _errno.EINVAL: "the kernel rejected the arguments; the feature may be missing "
    "from this kernel or the process may be multi-threaded",
    _errno.ENOENT: "the path does not exist",
    _errno.EBUSY: "the object is in use; stop what uses it first",
    _errno.ENOSPC: "no space (or a namespace/cgroup count limit) left",
    _errno.EUSERS: "too many nested user namespaces",
}


def kernel_error(
    op: str,
    err: int,
    *,
    path: str | os.PathLike[str] | None = None,
    hint: str | None = None,
    detail: str | None = None,
) -> KernelError:
    """Build the typed error for a failed system call ``op`` with ``err``.

    EPERM/EACCES become :class:`PermissionDenied`, ENOENT a
    :class:`KernelError` whose ``errno`` is ENOENT (so ``FileNotFoundError``
    handlers do not catch it by accident, but ``OSError`` ones do), EBUSY
    :class:`Busy`.
    """
    if err in (_errno.EPERM, _errno.EACCES):
        cls: type[KernelError] = PermissionDenied
    elif err == _errno.EBUSY:
        cls = Busy
    else:
        cls = KernelError
    message = f"{op} failed: {os.strerror(err)}"
    if detail:
        message += f" ({detail})"
    return cls(message, op=op, path=path, errno=err, hint=hint or _HINTS.get(err))


# -- archives and images (added with pycontain.image) -----------------------------


class InvalidArchive(InvalidArgument):
    """A layer tar, image layout or manifest is malformed or hostile.

    Raised before anything of the archive reaches the store: a half-extracted
    layer is removed again.
    """


class LimitExceeded(InvalidArchive):
    """An archive went past a cap (total size, entry count, compression ratio).

    ``field`` names the cap (``max_bytes``, ``max_entries``, ``max_ratio``) and
    ``value`` the value reached; raise the cap in :class:`pycontain.image.Limits`
    if the archive is trusted.
    """


class DigestMismatch(InvalidArchive):
    """Content does not hash to (or is not the size of) what its descriptor says."""


__all__ += ["InvalidArchive", "LimitExceeded", "DigestMismatch"]
