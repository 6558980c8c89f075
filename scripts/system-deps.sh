#!/usr/bin/env bash
# Install the Debian tools factory runs for real, when missing. Idempotent.
#   scripts/system-deps.sh [local|aws]     (default: local)
# aws:   packer (Debian's 1.6.6 is enough here; modern Packer works too).
# local: also what the local cloud and the tests need: openssh-server and its sftp
#        server (the build host's sshd), docker.io (its Docker engine), python3-pip (the
#        stand-in Miniconda installs the real awscli with the host's pip),
#        busybox-static (a small root filesystem for the build host's own Docker test),
#        musl (a musl-based image, like Alpine's, which the bake check must refuse) and
#        btrfs-progs, xfsprogs and lvm2 (the grow agent's pool backends, tested on loop devices)
#        and mdadm (the instance-store boot unit's RAID0; the build host hides it until the
#        role installs it, and where the kernel has no md a local instance runs factory's md double).
set -euo pipefail

need=()
command -v packer >/dev/null 2>&1 || need+=(packer)
if [ "${1:-local}" != aws ]; then
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  [ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-sftp-server)
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  [ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
  [ -e /lib/ld-musl-x86_64.so.1 ] || [ -e /lib/ld-musl-aarch64.so.1 ] || need+=(musl)
  command -v mkfs.btrfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.btrfs ] || need+=(btrfs-progs)
  command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || need+=(xfsprogs)
  command -v lvcreate >/dev/null 2>&1 || [ -x /usr/sbin/lvcreate ] || need+=(lvm2)
  command -v mdadm >/dev/null 2>&1 || [ -x /usr/sbin/mdadm ] || [ -x /sbin/mdadm ] || need+=(mdadm)
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing ${need[*]} with apt-get"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "system-deps: need root to apt-get install ${need[*]}; install them and re-run" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive

# Another apt or dpkg may hold the package manager's lock (on a fresh VM, unattended
# upgrades run at boot): wait for it, up to FACTORY_APT_LOCK_WAIT seconds (default 600),
# rather than fail with apt's bare exit 100. Any other failure says which command failed
# and apt's own reason.
lock_wait=${FACTORY_APT_LOCK_WAIT:-600}
apt_run() {
  local deadline=$((SECONDS + lock_wait)) said="" out rc
  while :; do
    out=$($SUDO "$@" -o DPkg::Lock::Timeout=10 2>&1) && return 0 || rc=$?
    if grep -qE 'Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock' <<<"$out"; then
      if [ "$SECONDS" -lt "$deadline" ]; then
        if [ -z "$said" ]; then
          echo "system-deps: another apt or dpkg is running (unattended upgrades?); waiting up to ${lock_wait}s for its lock"
          said=1
        fi
        sleep 5
        continue
      fi
      echo "system-deps: \`$*\` failed (exit $rc): another apt or dpkg held the package lock for more than ${lock_wait}s." >&2
      echo "system-deps: wait for it to finish (e.g. \`systemctl status unattended-upgrades\`), or set FACTORY_APT_LOCK_WAIT=SECONDS, and re-run. apt said:" >&2
    else
      echo "system-deps: \`$*\` failed (exit $rc). apt said:" >&2
    fi
    grep -vE '^\s*$' <<<"$out" | tail -n 8 | sed 's/^/  /' >&2
    exit "$rc"
  done
}
apt_run apt-get update -qq
apt_run apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "system-deps: done"
