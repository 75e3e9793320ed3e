"""Where pycontain keeps state and images, and how it writes them safely.

The state directory (like runc's ``/run/runc``) lets any process list,
inspect, stop and clean up containers, including orphans of a crashed
kernel. It defaults to ``/run/pycontain`` for root: /run is a tmpfs, so state
does not outlive a reboot, and neither do the containers it describes. The
image store defaults to ``/var/lib/pycontain``, which must survive reboots.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pycontain.errors import InvalidArgument

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
NAME_MAX = 128


def state_dir() -> Path:
    """The state directory: ``$PYCONTAIN_STATE_DIR``, else /run/pycontain
    (root) or ``$XDG_RUNTIME_DIR/pycontain``."""
    env = os.environ.get("PYCONTAIN_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() != 0 and os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "pycontain"
    return Path("/run/pycontain")


def store_dir() -> Path:
    """The image store: ``$PYCONTAIN_STORE``, else /var/lib/pycontain (root)
    or ``~/.local/share/pycontain``."""
    env = os.environ.get("PYCONTAIN_STORE")
    if env:
        return Path(env)
    if os.geteuid() != 0:
        return Path.home() / ".local" / "share" / "pycontain"
    return Path("/var/lib/pycontain")


def containers_dir() -> Path:
    """One directory per container below the state directory (its
    ``state.json``, ``exit`` file and log), named after the container."""
    return state_dir() / "containers"


def rootfs_dir(store: str | os.PathLike[str] | None = None) -> Path:
    """The containers' writable layers in ``store`` (default: store_dir()),
    one directory per container key: registered with the store by being
    there (pycontain.backends.storage_driver)."""
    return Path(store if store is not None else store_dir()) / "rootfs"


def list_dir(path: str | os.PathLike[str]) -> list[str]:
    """The names in the directory ``path``; none when it does not exist (or
    is no directory): state and store directories are made on first use."""
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []


def validate_name(name: object, field: str = "name") -> str:
    """Check a user-given name (container, network, cgroup, tag component).

    Names become directory and interface-derived names, so they are held to
    Docker's rule: ``[A-Za-z0-9][A-Za-z0-9_.-]*``, at most 128 characters.
    That rejects "", "..", "a/b", "-rf", NUL bytes and path tricks.

    Raises:
        InvalidArgument: naming ``field`` and the value.
    """
    if not isinstance(name, str):
        raise InvalidArgument(f"{field} must be a string", field=field, value=name)
    if len(name) > NAME_MAX:
        raise InvalidArgument(
            f"{field} is too long ({len(name)} characters)",
            field=field,
            value=name[:40] + "...",
            hint=f"at most {NAME_MAX} characters",
        )
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid {field}",
            field=field,
            value=name,
            hint="use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )
    return name


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    """Create ``path`` (and parents) if missing; state is private to root."""
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path


def _temp_file(directory: str, prefix: str) -> tuple[int, str]:
    """What tempfile.mkstemp makes (a new file, 0600, a random name), without
    importing tempfile: ~1 ms of every CLI start."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        name = os.path.join(directory, prefix + os.urandom(6).hex())
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name in {directory}")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename) so readers never see half a file."""
    # One dumps and one write (json.dump writes chunk by chunk); the
    # directory is made only if the first try says it is missing.
    text = _encode(data)
    try:
        fd, tmp = _temp_file(str(path.parent), f".{path.name}.")
    except FileNotFoundError:
        ensure_dir(path.parent)
        fd, tmp = _temp_file(str(path.parent), f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def create_json(path: Path, data: Any) -> None:
    """Write JSON to ``path``, a new file (``FileExistsError`` if it exists), in one write.

    For a file in a directory the caller has just made, where a temporary
    file and a rename (write_json) would cost two more metadata operations
    on the hot path: a reader that comes between the create and the write
    sees an empty file, which fails to parse, and read_json retries.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, _encode(data))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def rewrite_json(path: Path, data: Any) -> None:
    """Replace the JSON in ``path`` in place: one pwrite(2) at offset 0.

    No temporary file, no rename: no inode made and freed. The text is
    padded with spaces (JSON allows trailing whitespace) to at least the old
    length, so no truncate is needed and the file holds a whole document
    before and after the one system call, whenever the writer dies. A reader
    that reads during the write may see a mix that fails to parse; read_json
    retries.
    """
    text = _encode(data)
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        old = os.fstat(fd).st_size
        if len(text) < old:
            text = text[:-1] + b" " * (old - len(text)) + b"\n"
        os.pwrite(fd, text, 0)
    finally:
        os.close(fd)


def _encode(data: Any) -> bytes:
    # No indent: json's C encoder only serves compact output (indented, the
    # pure-Python one took ~0.35 ms per state file).
    return (json.dumps(data, sort_keys=True) + "\n").encode()


#: How often read_json reads again a document that does not parse (a writer
#: is mid-write: create_json, rewrite_json), and the pause between reads.
_READ_ATTEMPTS = 5
_READ_PAUSE_S = 0.002


def read_json(path: Path, attempts: int = _READ_ATTEMPTS) -> Any:
    """The JSON document in ``path``.

    One that does not parse is read again, up to ``attempts`` reads in all
    (~10 ms by default): a writer may be between its create and its write,
    or mid-write.

    Raises:
        OSError: it cannot be read (FileNotFoundError: there is none).
        ValueError: it still does not parse.
    """
    for attempt in range(attempts):
        with open(path, "rb") as f:
            raw = f.read()
        try:
            return json.loads(raw)
        except ValueError:
            if attempt >= attempts - 1:
                raise
            time.sleep(_READ_PAUSE_S)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock(2) on ``path`` (created if missing), across processes."""
    ensure_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
