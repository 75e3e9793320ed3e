"""Build the guest's initramfs: static busybox, the init scripts, a few modules.

The archive is written in the kernel's "newc" cpio format by this module
(no root needed to put /dev/console in it, no cpio binary needed) and cached
under a name derived from everything that went into it, so it is rebuilt only
when the kernel, busybox, the scripts or this builder change.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import struct
import time
from pathlib import Path

from tests.vm.kernel import CACHE, HERE, Kernel, VMSetupError, module_closure

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

# Loaded by init in this order (dependencies are added by module_closure).
# virtio_pci + 9p: the shared host root and the output directory; overlay:
# the writable layer over the read-only root; virtio_rng: entropy for
# getrandom() early on; loop, veth, bridge: so container tests in the guest
# do not depend on module autoloading.
MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_rng", "loop", "veth", "bridge"]


class _Newc:
    """A minimal writer of the kernel's initramfs format (newc cpio)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields) + encoded)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def find_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and _is_static(path):
            return path
    raise VMSetupError(
        f"no statically linked busybox at {' or '.join(BUSYBOX_CANDIDATES)}; "
        "hint: apt-get install busybox-static (./dev setup does)"
    )


def _is_static(path: Path) -> bool:
    """True when the ELF has no program interpreter (PT_INTERP), i.e. it is static."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def ensure_initramfs(kernel: Kernel) -> Path:
    """The cached initramfs for ``kernel``, built first if missing or stale."""
    busybox = find_busybox()
    modules = module_closure(kernel, MODULES)
    scripts = {name: (HERE / name).read_bytes() for name in ("init.sh", "stage2.sh")}

    digest = hashlib.sha256()
    digest.update(kernel.version.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(hashlib.sha256(busybox.read_bytes()).digest())
    for name, data in sorted(scripts.items()):
        digest.update(name.encode() + data)
    for mod in modules:
        digest.update(mod.name.encode())
    out = CACHE / f"initramfs-{digest.hexdigest()[:16]}.cpio.gz"
    if out.exists():
        return out

    cpio = _Newc()
    for d in ("bin", "dev", "proc", "sys", "lower", "rw", "newroot", "out", "modules"):
        cpio.dir(d)
    # The kernel opens /dev/console for init's stdio before init runs.
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", scripts["init.sh"], 0o755)
    cpio.file("stage2", scripts["stage2.sh"], 0o755)
    order = []
    for i, mod in enumerate(modules):
        name = f"{i:02d}-{mod.name}"
        cpio.file(f"modules/{name}", mod.read_bytes())
        order.append(name)
    cpio.file("modules/order", ("\n".join(order) + "\n").encode())

    CACHE.mkdir(parents=True, exist_ok=True)
    # Old builds go, but not one another run may be about to boot.
    for old in CACHE.glob("initramfs-*.cpio.gz"):
        if old.stat().st_mtime < time.time() - 3600:
            old.unlink(missing_ok=True)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(gzip.compress(cpio.finish(), compresslevel=6, mtime=0))
    os.rename(tmp, out)
    return out
