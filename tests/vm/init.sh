#!/bin/sh
# Stage 1, PID 1 in the initramfs (busybox sh). Builds the guest's root:
#   the host's / (9p, read-only) + a tmpfs overlay on top, so Python, the
#   venv and the project are the host's very files, and writes go to RAM;
#   proc, sys, devtmpfs, and cgroup2 at /sys/fs/cgroup (cgroup_no_v1=all on
#   the command line keeps every controller on the v2 hierarchy);
#   the output directory (9p, read-write) at /run/pycontain-vm/out.
# Then switch_root hands over to stage2, which runs pytest and powers off.
/bin/busybox --install -s /bin
export PATH=/bin

log() { echo "pycontain-vm: $*"; }
die() {
    log "FAILED in stage 1: $*"
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 60
}

mount -t proc proc /proc || die "mount proc"
mount -t sysfs sysfs /sys || die "mount sysfs"
mount -t devtmpfs devtmpfs /dev || die "mount devtmpfs"

log "stage 1 at $(cut -d' ' -f1 /proc/uptime) s; loading modules"
for m in $(cat /modules/order); do
    insmod "/modules/$m" || die "insmod $m"
done

# msize: bigger 9p messages mean fewer round trips through the (slow, TCG) virtio queue.
P9=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$P9,cache=none" out /out || die "mount the output share"
[ -r /out/job.env ] || die "no /out/job.env (the host writes it)"
. /out/job.env

# The host's / never changes under a run, so the guest may cache it freely.
mount -t 9p -o "$P9,ro,cache=loose" hostroot /lower || die "mount the host root"
mount -t tmpfs -o mode=0755 rw /rw || die "mount tmpfs /rw"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
    die "mount the overlay root"

N=/newroot
mount --move /proc $N/proc && mount --move /sys $N/sys && mount --move /dev $N/dev ||
    die "move proc/sys/dev"
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $N/sys/fs/cgroup || die "mount cgroup2"
mkdir -p $N/dev/pts $N/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $N/dev/pts || die "mount devpts"
mount -t tmpfs -o mode=1777,nosuid,nodev shm $N/dev/shm || die "mount /dev/shm"
# The project may live under /tmp or /run (a CI clone can be anywhere): keep
# its view of the overlay before fresh tmpfs cover those directories.
KEEP=
case "$PROJECT" in
/tmp/* | /run/*)
    mkdir -p /keep && mount --bind "$N$PROJECT" /keep || die "bind the project dir $PROJECT"
    KEEP=1
    ;;
esac
mount -t tmpfs -o mode=1777,nosuid,nodev tmp $N/tmp || die "mount /tmp"
mount -t tmpfs -o mode=0755,nosuid,nodev run $N/run || die "mount /run"
if [ -n "$KEEP" ]; then
    mkdir -p "$N$PROJECT" && mount --move /keep "$N$PROJECT" || die "move the project dir back"
fi
mkdir -p $N/run/pycontain-vm/out
mount --move /out $N/run/pycontain-vm/out || die "move the output share"

# The guest kernel's modules (unpacked in the host's cache) where modprobe looks.
if [ -n "${MODULES_DIR:-}" ] && [ -d "$N$MODULES_DIR" ]; then
    mkdir -p "$N/lib/modules/$(uname -r)"
    mount --bind "$N$MODULES_DIR" "$N/lib/modules/$(uname -r)" || die "bind the modules"
fi

cp /bin/busybox /stage2 $N/run/pycontain-vm/ || die "copy stage 2"
exec switch_root $N /run/pycontain-vm/busybox sh /run/pycontain-vm/stage2
die "switch_root"
