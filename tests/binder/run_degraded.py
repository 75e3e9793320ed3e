#!/usr/bin/env python3
"""Run a command the way mybinder.org would: not root, and under a seccomp
filter that refuses unshare, mount and setns (as Docker's default profile
does for an unprivileged container).

Usage (as root)::

    python3 tests/binder/run_degraded.py -- python3 -m pytest --nbval-lax notebooks/
    python3 tests/binder/run_degraded.py --no-seccomp -- CMD    # only drop to nobody (rootless)

How (each step needs the one before):

1. As root, re-exec itself under ``unshare --mount --propagation private``:
   the mounts of step 2 stay in that private mount namespace and vanish with it.
2. Make the Python installation reachable: when it lives under a directory
   other users cannot enter (e.g. pyenv under /root, mode 0700), put a tmpfs
   over that directory and bind the installation back into it. Nothing on the
   host changes.
3. Drop to ``nobody`` (no supplementary groups, no capabilities left), with a
   fresh HOME in a temporary directory.
4. Set no_new_privs and load the seccomp filter: unshare, mount, umount2,
   setns, pivot_root and clone with any CLONE_NEW* flag fail with EPERM;
   clone3 fails with ENOSYS so that libc falls back to clone (Docker does the
   same, as seccomp cannot inspect clone3's flags).
5. exec the command.

The exit status is the command's.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import subprocess
import sys
import tempfile

# CLONE_NEW* flags (sched.h): a clone asking for any of them is refused.
CLONE_NEW_FLAGS = {
    "CLONE_NEWTIME": 0x00000080,
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}
REFUSED = ("unshare", "setns", "mount", "umount2", "pivot_root", "fsopen", "fsmount", "move_mount",
           "open_tree", "mount_setattr")

STAGE2 = "--stage2"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _blocked_dirs(path: str, uid: int, gid: int) -> list[str]:
    """Directories on the way to ``path`` that ``uid`` cannot enter."""
    out = []
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        d = "/".join(parts[:i]) or "/"
        try:
            st = os.stat(d)
        except OSError:
            break
        mode = st.st_mode
        if st.st_uid == uid:
            ok = mode & 0o100
        elif st.st_gid == gid:
            ok = mode & 0o010
        else:
            ok = mode & 0o001
        if not ok:
            out.append(d)
    return out


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def _expose(paths: list[str], uid: int, gid: int) -> None:
    """In our private mount namespace, let ``uid`` reach each of ``paths``."""
    for path in paths:
        for blocked in _blocked_dirs(path, uid, gid):
            # Keep what is below `blocked` on the way to `path`, then cover `blocked`
            # with an enterable tmpfs and put that subtree back.
            rel = os.path.relpath(os.path.realpath(path), blocked).split("/")[0]
            keep = os.path.join(blocked, rel)
            stage = tempfile.mkdtemp(prefix="degraded-stage-")
            _mount("--rbind", keep, stage)
            _mount("-t", "tmpfs", "-o", "mode=0755", "tmpfs", blocked)
            target = os.path.join(blocked, rel)
            if os.path.isdir(stage):
                os.makedirs(target, exist_ok=True)
            _mount("--move", stage, target)
            os.rmdir(stage)


def _seccomp() -> None:
    import pyseccomp as sc

    f = sc.SyscallFilter(defaction=sc.ALLOW)
    for name in REFUSED:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except Exception:  # a syscall this libseccomp or arch does not know
            pass
    for flag in CLONE_NEW_FLAGS.values():
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    try:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    except Exception:
        pass
    f.load()  # sets no_new_privs itself (libseccomp's default CTL_NNP)


def stage2(argv: list[str]) -> int:
    user = pwd.getpwnam("nobody")
    uid, gid = user.pw_uid, user.pw_gid
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    _expose([sys.executable, sys.prefix, sys.base_prefix, os.getcwd()], uid, gid)
    home = os.environ["DEGRADED_HOME"]
    env = {
        "HOME": home,
        "USER": "nobody",
        "LOGNAME": "nobody",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": home,
        "MPLBACKEND": "Agg",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if "VIRTUAL_ENV" in os.environ:
        env["VIRTUAL_ENV"] = os.environ["VIRTUAL_ENV"]
    # The repository first, so pycontain imports even where it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if not os.environ.get("DEGRADED_NO_SECCOMP"):
        _seccomp()
    os.execvpe(argv[0], argv, env)


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == [STAGE2]:
        return stage2(args[1:])
    no_seccomp = args[:1] == ["--no-seccomp"]
    if no_seccomp:  # only drop to nobody: what works rootless on this kernel
        args = args[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("run_degraded: run me as root (I drop to nobody myself)", file=sys.stderr)
        return 2
    if shutil.which("unshare") is None:
        print("run_degraded: needs unshare(1) from util-linux", file=sys.stderr)
        return 2
    home = tempfile.mkdtemp(prefix="degraded-home-")
    try:
        user = pwd.getpwnam("nobody")
        os.chown(home, user.pw_uid, user.pw_gid)
        cmd = ["unshare", "--mount", "--propagation", "private", "--",
               sys.executable, os.path.abspath(__file__), STAGE2, *args]
        env = {**os.environ, "DEGRADED_HOME": home}
        if no_seccomp:
            env["DEGRADED_NO_SECCOMP"] = "1"
        return subprocess.run(cmd, env=env).returncode
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
