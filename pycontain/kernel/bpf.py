"""bpf(2): load the one tiny program pycontain needs, a cgroup-classid classifier.

net_cls tags each socket of a cgroup with a class id; the classic consumer
is the ``cgroup`` tc filter (cls_cgroup), which many kernels (this one
among them) leave out. The same lookup is a single BPF helper,
``bpf_get_cgroup_classid(skb)``, usable from a cls_bpf program. In cls_bpf's
classic (non direct-action) mode the program's return value is the class id
(0: no match), which is exactly cls_cgroup's behaviour. The program::

    r0 = bpf_get_cgroup_classid(r1 = skb)
    exit

The caller gets a file descriptor to hand to a tc ``bpf`` filter (``fd``),
and closes it once the filter holds its own reference.
"""

from __future__ import annotations

import ctypes
import os
import struct

from pycontain.errors import Unsupported, kernel_error

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
BPF_PROG_LOAD = 5
BPF_PROG_TYPE_SCHED_CLS = 3
BPF_FUNC_get_cgroup_classid = 17
_BPF_JMP_CALL = 0x85
_BPF_JMP_EXIT = 0x95

_libc = ctypes.CDLL("libc.so.6", use_errno=True)  # find_library runs ldconfig
_libc.syscall.restype = ctypes.c_long


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    # struct bpf_insn { u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm; }
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


CLASSID_PROGRAM = _insn(_BPF_JMP_CALL, imm=BPF_FUNC_get_cgroup_classid) + _insn(_BPF_JMP_EXIT)


def load_cgroup_classid_program() -> int:
    """Load the classid classifier; return its fd (close it when done).

    Raises:
        Unsupported: no bpf(2) number for this architecture.
        KernelError / PermissionDenied: the kernel refused (errno and the
            verifier's log in the message).
    """
    nr = _BPF_SYSCALL.get(os.uname().machine)
    if nr is None:
        raise Unsupported("no bpf(2) number for this architecture", op="bpf", hint="x86_64 and aarch64 are known")
    insns = ctypes.create_string_buffer(CLASSID_PROGRAM, len(CLASSID_PROGRAM))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    # union bpf_attr, BPF_PROG_LOAD part: prog_type, insn_cnt, insns, license,
    # log_level, log_size, log_buf, kern_version, prog_flags, prog_name[16];
    # the rest stays zero (the kernel requires unused tail bytes to be zero).
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQII16s", attr, 0, BPF_PROG_TYPE_SCHED_CLS, len(CLASSID_PROGRAM) // 8,
                     ctypes.addressof(insns), ctypes.addressof(license_), 1, len(log), ctypes.addressof(log),
                     0, 0, b"pyc_classid")
    fd = _libc.syscall(nr, BPF_PROG_LOAD, attr, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise kernel_error("bpf(BPF_PROG_LOAD)", err,
                           detail="verifier: " + log.value.decode(errors="replace").strip()[-300:])
    return int(fd)
