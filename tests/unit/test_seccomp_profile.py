"""Seccomp profiles without the kernel: strict parsing, the default profile's
content, the masked-compare cover, and compilation (libseccomp, no loading)."""

from __future__ import annotations

import errno
import json
import random

import pytest

from pycontain.backends import seccomp as S
from pycontain.errors import InvalidArgument
from pycontain.kernel.constants import CAPABILITIES, DOCKER_DEFAULT_CAPS


def _matches(cover: list[tuple[int, int]], value: int) -> bool:
    return any(value & mask == want for mask, want in cover)


def test_complement_cover_mknod_mode_exhaustive():
    cover = S.complement_cover([0o060000], 0o170000)
    for mode in range(0, 1 << 16, 7):
        assert _matches(cover, mode) == ((mode & 0o170000) != 0o060000), oct(mode)
    for kind in (0o010000, 0o020000, 0o040000, 0o060000, 0o100000, 0o140000):
        assert _matches(cover, kind | 0o644) == (kind != 0o060000)


def test_complement_cover_ioctl_requests():
    forbidden = (S.TIOCSTI, S.TIOCLINUX)
    cover = S.complement_cover(forbidden, 0xFFFFFFFF)
    rng = random.Random(7)
    values = [rng.getrandbits(64) for _ in range(20000)]
    values += [0x5401, 0x5413, 0x541B, 0x541D, 0x5412 ^ 0x0E, 0x80045430]
    for v in values:
        assert _matches(cover, v) == ((v & 0xFFFFFFFF) not in forbidden), hex(v)
    for f in forbidden:
        # Garbage in the upper half does not help: the kernel truncates ioctl's request.
        for high in (0, 1 << 32, 0xFFFFFFFF << 32):
            assert not _matches(cover, f | high)
    with pytest.raises(InvalidArgument):
        S.complement_cover([], 0xFF)
    with pytest.raises(InvalidArgument):
        S.complement_cover([0x00, 0xFF], 0xFF)  # 8 disagreeing bits: too many rules


def _allow_rules(profile: S.Profile, caps=DOCKER_DEFAULT_CAPS):
    return [r for r in profile.rules if r.action == "SCMP_ACT_ALLOW" and r.applies(caps, "x86_64", (6, 18))]


def test_default_profile_refuses_what_docker_refuses():
    p = S.default_profile()
    assert p.default_action == "SCMP_ACT_ERRNO" and p.default_errno == errno.EPERM
    unconditional = {n for r in _allow_rules(p) if not r.args for n in r.names}
    conditional = {n for r in _allow_rules(p) if r.args for n in r.names}
    refused = {"mount", "umount2", "pivot_root", "setns", "keyctl", "add_key", "request_key", "ptrace", "bpf",
               "perf_event_open", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
               "process_vm_readv", "process_vm_writev", "userfaultfd", "io_uring_setup", "io_uring_enter",
               "io_uring_register", "swapon", "swapoff", "reboot", "acct", "settimeofday", "clock_settime",
               "clock_adjtime", "adjtimex", "stime", "syslog", "quotactl", "lookup_dcookie", "open_by_handle_at",
               "name_to_handle_at", "fsopen", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
               "nfsservctl", "get_kernel_syms", "query_module", "sysfs", "_sysctl", "ustat", "vm86", "vm86old",
               "uselib", "iopl", "ioperm", "kcmp", "pidfd_getfd", "create_module", "clone3"}
    assert not refused & unconditional
    assert not refused & conditional
    # Restricted by argument, never unconditionally: clone, unshare, personality, ioctl, mknod.
    assert {"clone", "unshare", "personality", "ioctl", "mknod", "mknodat"} <= conditional
    assert not {"clone", "unshare", "personality", "ioctl", "mknod", "mknodat"} & unconditional
    for name in S.NEVER_ALLOWED:
        assert all(name not in r.names for r in _allow_rules(p, CAPABILITIES)), name
    # clone3 answers ENOSYS so that libc falls back to clone.
    clone3 = [r for r in p.rules if "clone3" in r.names and r.action == "SCMP_ACT_ERRNO"]
    assert clone3 and clone3[0].errno_ret == errno.ENOSYS


def test_default_profile_capability_gates():
    p = S.default_profile()
    admin = {n for r in _allow_rules(p, (*DOCKER_DEFAULT_CAPS, "CAP_SYS_ADMIN")) if not r.args for n in r.names}
    assert {"mount", "umount2", "unshare", "setns", "clone", "pivot_root"} <= admin
    ptrace = {n for r in _allow_rules(p, (*DOCKER_DEFAULT_CAPS, "CAP_SYS_PTRACE")) for n in r.names}
    assert "ptrace" in ptrace and "keyctl" not in ptrace
    clone = next(r for r in p.rules if r.names == ("clone",) and r.args)
    mask = clone.args[0].value
    # Every namespace flag, and not CLONE_NEWTIME (0x80), which is part of clone's exit signal byte.
    assert mask == 0x7E020000 and clone.args[0].value_two == 0 and clone.args[0].op == "SCMP_CMP_MASKED_EQ"
    unshare = next(r for r in p.rules if r.names == ("unshare",) and r.args)
    assert unshare.args[0].value == 0x7E020080


def test_default_profile_is_docker_format_json():
    data = S.default_profile_data()
    again = S.parse_profile(json.loads(json.dumps(data)))
    assert again == S.default_profile()


GOOD = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}


@pytest.mark.parametrize("patch, where", [
    ({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction"),
    ({"defaultAction": "SCMP_ACT_NOTIFY"}, "defaultAction"),
    ({"extra": 1}, "profile"),
    ({"architectures": ["SCMP_ARCH_Z80"]}, "architectures"),
    ({"architectures": "SCMP_ARCH_X86_64"}, "architectures"),
    ({"archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["NOPE"]}]}, "architectures"),
    ({"defaultErrnoRet": 1, "defaultAction": "SCMP_ACT_ALLOW"}, "defaultErrnoRet"),
    ({"defaultErrnoRet": -1}, "defaultErrnoRet"),
    ({"defaultErrnoRet": True}, "defaultErrnoRet"),
    ({"defaultErrno": "ENOTANERRNO"}, "defaultErrno"),
    ({"defaultErrno": "EPERM", "defaultErrnoRet": 38}, "defaultErrnoRet"),
    ({"syscalls": {"names": ["read"]}}, "syscalls"),
    ({"syscalls": [{"names": ["read"]}]}, "syscalls[0]"),
    ({"syscalls": [{"names": "read", "action": "SCMP_ACT_ALLOW"}]}, "syscalls[0].names"),
    ({"syscalls": [{"names": ["rm -rf"], "action": "SCMP_ACT_ALLOW"}]}, "syscalls[0].names"),
    ({"syscalls": [{"names": ["read"], "name": "read", "action": "SCMP_ACT_ALLOW"}]}, "syscalls[0]"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "bogus": 1}]}, "syscalls[0]"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}, "syscalls[0].args[0].index"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}, "syscalls[0].args[0].value"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1 << 64, "op": "SCMP_CMP_EQ"}]}]}, "syscalls[0].args[0].value"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]}, "syscalls[0].args[0].op"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "op": "SCMP_CMP_EQ"}]}]}, "syscalls[0].args[0]"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}, "syscalls[0].errnoRet"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"caps": ["CAP_TELEPATHY"]}}]}, "syscalls[0].includes.caps"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                    "includes": {"minKernel": "four"}}]}, "syscalls[0].includes.minKernel"),
    ({"syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"os": "linux"}}]},
     "syscalls[0].includes"),
])
def test_strict_validation(patch, where):
    data = {**GOOD, **patch}
    with pytest.raises(InvalidArgument) as info:
        S.parse_profile(data)
    assert info.value.field == f"seccomp.{where}", info.value


def test_docker_shapes_parse():
    data = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW", "args": [], "comment": "",
             "includes": {}, "excludes": {}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]},
             "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"name": "getpid", "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "errno": "ENOSYS"},
        ],
    }
    p = S.parse_profile(data)
    assert p.architectures[:3] == ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")
    ptrace, arch_prctl, clone, getpid = p.rules[1:]
    assert ptrace.applies([], "x86_64", (4, 8)) and not ptrace.applies([], "x86_64", (4, 4))
    assert arch_prctl.applies([], "x86_64", (6, 1)) and not arch_prctl.applies([], "aarch64", (6, 1))
    assert clone.applies(["CAP_CHOWN"], "x86_64", (6, 1)) and not clone.applies(["SYS_ADMIN"], "x86_64", (6, 1))
    assert getpid.errno_ret == errno.ENOSYS
    S.build_filter(p)  # compiles with libseccomp (nothing is loaded)


def test_load_profile_forms(tmp_path):
    assert S.load_profile("default") is S.default_profile()
    assert S.load_profile("unconfined") is None
    assert S.load_profile(GOOD).default_action == "SCMP_ACT_ERRNO"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(GOOD))
    assert S.load_profile(path) == S.load_profile(str(path))
    for bad in (123, "", None, ["default"]):
        with pytest.raises(InvalidArgument):
            S.load_profile(bad)
    path.write_text("[1, 2")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        S.load_profile(path)
    path.write_text("[]")
    with pytest.raises(InvalidArgument, match="JSON object"):
        S.load_profile(path)


def test_compile_bpf_is_cached_and_depends_on_caps():
    p = S.default_profile()
    a = S.compile_bpf(p)
    assert a is not None and len(a) % 8 == 0 and len(a) // 8 < 4096  # BPF_MAXINSNS
    assert S.compile_bpf(p, list(DOCKER_DEFAULT_CAPS)) is a
    b = S.compile_bpf(p, (*DOCKER_DEFAULT_CAPS, "CAP_SYS_ADMIN"))
    assert b != a
    assert S.compile_bpf(None) is None


def test_duplicate_argument_conditions_become_alternatives():
    p = S.parse_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ERRNO",
         "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}]}]})
    S.build_filter(p)  # libseccomp alone would refuse two comparisons of one argument
