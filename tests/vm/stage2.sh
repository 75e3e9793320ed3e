#!/bin/sh
# Stage 2, PID 1 after switch_root: the guest's root is the host's / under a
# tmpfs overlay. Runs the command the host wrote into job.env (pytest, from
# the project directory), records its exit status in the output share, then
# powers the VM off. Only busybox (copied to /run) is used here, so nothing
# depends on the host having one.
BB=/run/pycontain-vm/busybox
OUT=/run/pycontain-vm/out
. $OUT/job.env

echo "pycontain-vm: userspace ready at $($BB cut -d' ' -f1 /proc/uptime) s guest uptime" \
    "(kernel $($BB uname -r), $($BB nproc) CPUs)"
echo "pycontain-vm: $($BB grep ' /sys/fs/cgroup ' /proc/mounts);" \
    "controllers: $($BB cat /sys/fs/cgroup/cgroup.controllers)"

cd "$PROJECT" || echo "pycontain-vm: cannot cd to $PROJECT"
echo "pycontain-vm: running: $COMMAND"
# Through a pipe, not the serial tty: no progress redraws in the log.
set -o pipefail
eval "$COMMAND" </dev/null 2>&1 | $BB cat
rc=$?
echo "pycontain-vm: exit status $rc at $($BB cut -d' ' -f1 /proc/uptime) s guest uptime"
echo "$rc" >$OUT/rc.tmp && $BB mv $OUT/rc.tmp $OUT/rc
$BB sync
$BB umount $OUT
$BB poweroff -f
echo o >/proc/sysrq-trigger
$BB sleep 60
