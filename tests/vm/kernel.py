"""The guest kernel: Debian's bookworm kernel, fetched with apt and cached.

The kernel is never installed on the host: ``apt-get download`` fetches the
.deb and ``dpkg-deb -x`` unpacks it into ``tests/vm/cache/kernel/``. Once a
kernel is unpacked there it is reused without touching the network, so a
second run (or an offline one) is fast.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
KERNEL_DIR = CACHE / "kernel"
# Written last, after a complete extraction: its presence means the tree is whole.
STAMP = KERNEL_DIR / ".pycontain-kernel"
META_PACKAGE = "linux-image-amd64"


class VMSetupError(RuntimeError):
    """The VM could not be prepared (no kernel, no busybox, no qemu, ...)."""


@dataclass(frozen=True)
class Kernel:
    root: Path  # where the .deb was unpacked (has boot/ and lib/modules/)
    version: str  # e.g. "6.1.0-56-amd64"

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def config(self) -> Path:
        return self.root / "boot" / f"config-{self.version}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def vmlinux(self) -> Path:
        return self.root / "boot" / f"vmlinux-{self.version}"

    @property
    def boot_image(self) -> Path:
        """What qemu's -kernel gets: the uncompressed ELF when we have it, else the bzImage."""
        return self.vmlinux if self.vmlinux.is_file() else self.vmlinuz


def cached_kernel() -> Kernel | None:
    """The kernel already unpacked in the cache, or None."""
    try:
        version = STAMP.read_text().strip()
    except FileNotFoundError:
        return None
    kernel = Kernel(KERNEL_DIR, version)
    return kernel if kernel.vmlinuz.is_file() and kernel.modules_dir.is_dir() else None


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, text=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]


def kernel_package_name() -> str:
    """The versioned image package that Debian's meta package points at today."""
    for attempt in range(2):
        res = _run(["apt-cache", "depends", META_PACKAGE])
        m = re.search(r"Depends:\s*(linux-image-[0-9][\w.+-]*-amd64)\b", res.stdout)
        if m:
            return m.group(1)
        if attempt == 0:
            # A fresh machine may have no package lists yet.
            _run(["apt-get", "update", "-qq"])
    raise VMSetupError(
        f"apt-cache depends {META_PACKAGE} names no kernel package "
        f"(stdout={res.stdout!r}, stderr={res.stderr.strip()!r}); "
        "hint: run 'apt-get update' as root, with access to Debian's mirrors"
    )


def fetch_kernel() -> Kernel:
    """Download and unpack the kernel .deb into the cache (replacing any old one)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kernel-dl-", dir=CACHE) as tmp:
        for attempt in range(2):
            package = kernel_package_name()
            res = _run(["apt-get", "download", package], cwd=tmp)
            debs = sorted(Path(tmp).glob("*.deb"))
            if res.returncode == 0 and debs:
                break
            if attempt == 0:
                # Stale package lists name a version the mirror has since replaced.
                _run(["apt-get", "update", "-qq"])
        else:
            raise VMSetupError(
                f"apt-get download {package} failed (exit {res.returncode}): {res.stderr.strip()}; "
                "hint: needs root and access to Debian's mirrors"
            )
        tree = Path(tmp) / "tree"
        res = _run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
        if res.returncode != 0:
            raise VMSetupError(f"dpkg-deb -x {debs[0].name} failed: {res.stderr.strip()}")
        versions = [p.name[len("vmlinuz-") :] for p in (tree / "boot").glob("vmlinuz-*")]
        if len(versions) != 1:
            raise VMSetupError(f"{debs[0].name} holds {len(versions)} kernels, expected one")
        version = versions[0]
        _depmod(tree, version)
        if KERNEL_DIR.exists():
            shutil.rmtree(KERNEL_DIR)
        os.rename(tree, KERNEL_DIR)
    STAMP.write_text(version + "\n")
    kernel = cached_kernel()
    assert kernel is not None
    return kernel


def _depmod(tree: Path, version: str) -> None:
    """Index the modules so modprobe inside the guest works (kmod's depmod).

    The initramfs does not need it (it loads a fixed list in order); this is
    for tests inside the guest that make the kernel autoload e.g. veth.
    """
    depmod = shutil.which("depmod") or next(
        (p for p in ("/usr/sbin/depmod", "/sbin/depmod") if os.access(p, os.X_OK)), None
    )
    if depmod:
        _run([depmod, "-b", str(tree), version])


def ensure_kernel() -> Kernel:
    """The cached kernel, fetched first if the cache has none."""
    kernel = cached_kernel() or fetch_kernel()
    if not (kernel.modules_dir / "modules.dep.bin").exists():
        # Unpacked before kmod was installed: index it now.
        _depmod(kernel.root, kernel.version)
    if not kernel.vmlinux.exists():
        _extract_vmlinux(kernel)
    return kernel


# Magic numbers of the compressed payload inside a bzImage (as scripts/extract-vmlinux looks for).
_PAYLOADS = {
    b"\xfd7zXZ\x00": lambda data: lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data),
    b"\x1f\x8b\x08": lambda data: zlib.decompressobj(wbits=31).decompress(data),
}


def _extract_vmlinux(kernel: Kernel) -> None:
    """Unpack the ELF kernel from the bzImage, for qemu to boot it through its PVH entry.

    Under TCG the bzImage's own xz decompressor runs emulated and costs about
    10 s of every boot; decompressing once on the host saves that. Only done
    for a kernel built with CONFIG_PVH (Debian's is); otherwise, and on any
    surprise, the bzImage is booted as it is.
    """
    try:
        if "CONFIG_PVH=y" not in kernel.config.read_text().splitlines():
            return
        data = kernel.vmlinuz.read_bytes()
        for magic, decompress in _PAYLOADS.items():
            start = data.find(magic)
            if start < 0:
                continue
            try:
                elf = decompress(data[start:])
            except (lzma.LZMAError, zlib.error):
                continue
            if elf[:4] == b"\x7fELF":
                tmp = kernel.vmlinux.with_suffix(f".tmp{os.getpid()}")
                tmp.write_bytes(elf)
                os.rename(tmp, kernel.vmlinux)
                return
    except OSError:
        return


# --- modules -----------------------------------------------------------------


def _modinfo_depends(path: Path) -> list[str]:
    """The ``depends=`` list from a .ko's ``.modinfo`` ELF section.

    Read straight from the ELF so the host needs no kmod of the guest's version.
    """
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise VMSetupError(f"{path} is not a 64-bit ELF module (compressed modules are not supported)")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name,) = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for i in range(shnum):
        name_off, offset, size = section(i)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off : end] == b".modinfo":
            for field in data[offset : offset + size].split(b"\0"):
                if field.startswith(b"depends="):
                    return [d for d in field[len("depends=") :].decode().split(",") if d]
            return []
    return []


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_closure(kernel: Kernel, wanted: list[str]) -> list[Path]:
    """The .ko files for ``wanted`` and everything they depend on, dependencies first.

    Modules built into the kernel (modules.builtin) are skipped.
    """
    index = {_norm(p.name[: -len(".ko")]): p for p in (kernel.modules_dir / "kernel").rglob("*.ko")}
    builtin = set()
    builtin_file = kernel.modules_dir / "modules.builtin"
    if builtin_file.exists():
        builtin = {
            _norm(Path(line.strip()).name.removesuffix(".ko"))
            for line in builtin_file.read_text().splitlines()
        }
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = _norm(name)
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name in builtin:
                return
            raise VMSetupError(f"kernel {kernel.version} has no module {name!r}")
        for dep in _modinfo_depends(index[name]):
            visit(dep)
        order.append(index[name])

    for name in wanted:
        visit(name)
    return order
