"""The cgroup v2 device controller: a hand-assembled BPF program, via ctypes.

cgroup v2 has no devices.allow/devices.deny files. Device access is decided
by a program of type BPF_PROG_TYPE_CGROUP_DEVICE attached to the cgroup
(Documentation/admin-guide/cgroup-v2.rst, "Device controller"); runc and
crun generate one from the container's device rules. pycontain does the
same without a compiler or libbpf: the program is a few instructions,
assembled here from the encoding in the kernel's Documentation/bpf/
standardization/instruction-set.rst and include/uapi/linux/bpf.h, and
loaded and attached with bpf(2) through ctypes.

(The net_cls classid classifier lives in :mod:`pycontain.kernel.bpf`.)
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

from pycontain.errors import Unsupported, kernel_error

# bpf(2) commands (include/uapi/linux/bpf.h, enum bpf_cmd)
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_QUERY = 16

# enum bpf_prog_type
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_PROG_TYPE_CGROUP_DEVICE = 15

# enum bpf_attach_type
BPF_CGROUP_DEVICE = 6

# attach flags
BPF_F_ALLOW_OVERRIDE = 1
BPF_F_ALLOW_MULTI = 2

# helper function ids (enum bpf_func_id)
BPF_FUNC_get_cgroup_classid = 17

# -- instruction encoding --------------------------------------------------------------
# class
BPF_LD, BPF_LDX, BPF_ST, BPF_STX, BPF_ALU, BPF_JMP, BPF_JMP32, BPF_ALU64 = 0, 1, 2, 3, 4, 5, 6, 7
# size / mode
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
BPF_MEM = 0x60
# source
BPF_K, BPF_X = 0x00, 0x08
# alu ops
BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70
BPF_MOV = 0xB0
# jump ops
BPF_JA, BPF_JEQ, BPF_JGT, BPF_JGE, BPF_JSET, BPF_JNE = 0x00, 0x10, 0x20, 0x30, 0x40, 0x50
BPF_CALL, BPF_EXIT = 0x80, 0x90

_SYS_BPF = {"x86_64": 321, "aarch64": 280}

_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library runs ldconfig
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One 8-byte instruction: opcode, dst/src registers (4 bits each), signed 16-bit offset, 32-bit imm."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def mov64_imm(dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, imm=imm)


def mov64_reg(dst: int, src: int) -> bytes:
    return insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src)


def alu64_imm(op: int, dst: int, imm: int) -> bytes:
    return insn(BPF_ALU64 | op | BPF_K, dst, imm=imm)


def ldx_w(dst: int, src: int, off: int) -> bytes:
    """dst = *(u32 *)(src + off)"""
    return insn(BPF_LDX | BPF_MEM | BPF_W, dst, src, off)


def jmp_imm(op: int, dst: int, imm: int, off: int) -> bytes:
    """if (dst OP imm) goto pc + 1 + off"""
    return insn(BPF_JMP | op | BPF_K, dst, off=off, imm=imm)


def call(helper: int) -> bytes:
    return insn(BPF_JMP | BPF_CALL, imm=helper)


def exit_() -> bytes:
    return insn(BPF_JMP | BPF_EXIT)


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], op: str) -> int:
    nr = _SYS_BPF.get(os.uname().machine)
    if nr is None:
        raise Unsupported("no bpf(2) system call number for this architecture", op=op,
                          hint="pycontain knows x86_64 and aarch64")
    ret = _syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise kernel_error(op, err, hint="loading BPF programs needs CAP_BPF/CAP_SYS_ADMIN and "
                           "CONFIG_BPF_SYSCALL" if err in (errno.EPERM, errno.ENOSYS) else None)
    return int(ret)


_ATTR_SIZE = 144  # larger than every field used here; the kernel checks the tail is zero


def load_program(prog_type: int, code: bytes, *, license: str = "GPL", expected_attach_type: int = 0,
                 name: str = "") -> int:
    """BPF_PROG_LOAD: verify and load ``code`` (concatenated instructions); return the program fd.

    On a verifier rejection the verifier's log is part of the error message.
    """
    if len(code) % 8:
        raise ValueError("BPF code must be a whole number of 8-byte instructions")
    insns = ctypes.create_string_buffer(code, len(code))
    lic = ctypes.create_string_buffer(license.encode())
    log = ctypes.create_string_buffer(65536)
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # union bpf_attr, the BPF_PROG_LOAD struct: prog_type, insn_cnt, insns,
    # license, log_level, log_size, log_buf, kern_version, prog_flags,
    # prog_name[16], prog_ifindex, expected_attach_type.
    struct.pack_into("<IIQQIIQII16sII", attr, 0, prog_type, len(code) // 8, ctypes.addressof(insns),
                     ctypes.addressof(lic), 1, len(log), ctypes.addressof(log), 0, 0,
                     name.encode()[:15], 0, expected_attach_type)
    try:
        return _bpf(BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)")
    except OSError as e:
        text = log.value.decode(errors="replace").strip()
        if text:
            e.args = (e.args[0], f"{e.args[1] if len(e.args) > 1 else e}\n  verifier: {text[-2000:]}")
        raise


def prog_attach(target_fd: int, prog_fd: int, attach_type: int, flags: int = 0) -> None:
    """BPF_PROG_ATTACH ``prog_fd`` to the object behind ``target_fd`` (e.g. a cgroup directory)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIII", attr, 0, target_fd, prog_fd, attach_type, flags)
    _bpf(BPF_PROG_ATTACH, attr, "bpf(BPF_PROG_ATTACH)")


def prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH one program (needed with BPF_F_ALLOW_MULTI)."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIII", attr, 0, target_fd, prog_fd, attach_type, 0)
    _bpf(BPF_PROG_DETACH, attr, "bpf(BPF_PROG_DETACH)")


def prog_query_count(target_fd: int, attach_type: int) -> int:
    """How many programs of ``attach_type`` are attached directly to ``target_fd``."""
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # BPF_PROG_QUERY: target_fd, attach_type, query_flags, attach_flags, prog_ids (ptr), prog_cnt
    struct.pack_into("<IIIIQI", attr, 0, target_fd, attach_type, 0, 0, 0, 0)
    _bpf(BPF_PROG_QUERY, attr, "bpf(BPF_PROG_QUERY)")
    return int(struct.unpack_from("<I", attr, 24)[0])


def open_dir(path: str) -> int:
    """An O_RDONLY|O_DIRECTORY fd for a cgroup directory (BPF attach target)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise kernel_error("open", e.errno or errno.EIO, path=path) from None


# -- the device program ------------------------------------------------------------------

# struct bpf_cgroup_dev_ctx { __u32 access_type; __u32 major; __u32 minor; }
# access_type = (access << 16) | type  (include/uapi/linux/bpf.h)
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2
_TYPE = {"b": BPF_DEVCG_DEV_BLOCK, "c": BPF_DEVCG_DEV_CHAR}
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}

DeviceRuleTuple = tuple[str, "int | None", "int | None", str]  # (kind, major, minor, access)


def _mask(access: str) -> int:
    m = 0
    for c in access:
        m |= _ACCESS[c]
    return m


def compile_device_program(default_allow: bool, rules: list[tuple[str, int | None, int | None, str]]) -> bytes:
    """Instructions for "default, except these rules", with cgroup v1's semantics.

    Registers: r2 = device type, r3 = requested access bits, r4 = major,
    r5 = minor. Each rule is a block that jumps to the next block on a
    mismatch and otherwise returns the opposite of the default. As in v1
    (security/device_cgroup.c): with a deny default an allow rule must cover
    *every* requested access bit; with an allow default a deny rule matches
    if it covers *any* of them. Returns 1 to allow, 0 to deny.
    """
    code = [
        ldx_w(2, 1, 0),
        alu64_imm(BPF_AND, 2, 0xFFFF),  # type
        ldx_w(3, 1, 0),
        alu64_imm(BPF_RSH, 3, 16),  # access
        ldx_w(4, 1, 4),  # major
        ldx_w(5, 1, 8),  # minor
    ]
    verdict = 0 if default_allow else 1
    for kind, major, minor, access in rules:
        block: list[bytes | tuple[int, int, int]] = []  # (op, reg, imm) jumps are patched below
        if kind != "a":
            block.append((BPF_JNE, 2, _TYPE[kind]))
        acc = _mask(access)
        if acc != 7:
            if default_allow:
                # deny rule: matches when (req & acc) != 0
                block.append(mov64_reg(1, 3))
                block.append(alu64_imm(BPF_AND, 1, acc))
                block.append((BPF_JEQ, 1, 0))
            else:
                # allow rule: matches when (req & ~acc) == 0
                block.append((BPF_JSET, 3, 7 & ~acc))
        if major is not None:
            block.append((BPF_JNE, 4, major))
        if minor is not None:
            block.append((BPF_JNE, 5, minor))
        block.append(mov64_imm(0, verdict))
        block.append(exit_())
        n = len(block)
        for i, item in enumerate(block):
            if isinstance(item, tuple):
                op, reg, imm = item
                # jump to the first instruction after this block
                code.append(jmp_imm(op, reg, imm, n - i - 1))
            else:
                code.append(item)
    code.append(mov64_imm(0, 1 - verdict))
    code.append(exit_())
    return b"".join(code)


class DeviceProgram:
    """A device program attached to one cgroup; :meth:`detach` removes it."""

    def __init__(self, cgroup_path: str, prog_fd: int) -> None:
        self.cgroup_path = cgroup_path
        self.prog_fd = prog_fd

    def detach(self) -> None:
        """Detach (if the cgroup still exists) and close the program. Idempotent."""
        if self.prog_fd < 0:
            return
        try:
            if os.path.isdir(self.cgroup_path):
                fd = open_dir(self.cgroup_path)
                try:
                    prog_detach(fd, self.prog_fd, BPF_CGROUP_DEVICE)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.ENODEV):
                        raise
                finally:
                    os.close(fd)
        finally:
            os.close(self.prog_fd)
            self.prog_fd = -1

    def __del__(self) -> None:  # a forgotten program must not leak an fd forever
        if getattr(self, "prog_fd", -1) >= 0:
            try:
                os.close(self.prog_fd)
            except OSError:
                pass


def attach_device_policy(cgroup_path: str, default_allow: bool,
                         rules: list[tuple[str, int | None, int | None, str]]) -> DeviceProgram:
    """Load the device program for the policy and attach it to ``cgroup_path``.

    BPF_F_ALLOW_MULTI keeps programs of parents working (every program on the
    path must allow, cgroup-v2.rst), and lets an update attach the new program
    before the old one is detached, so there is no unguarded moment.
    """
    code = compile_device_program(default_allow, rules)
    prog = load_program(BPF_PROG_TYPE_CGROUP_DEVICE, code, expected_attach_type=BPF_CGROUP_DEVICE,
                        name="pyc_devices")
    try:
        fd = open_dir(cgroup_path)
        try:
            prog_attach(fd, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
        finally:
            os.close(fd)
    except BaseException:
        os.close(prog)
        raise
    return DeviceProgram(cgroup_path, prog)
