#!/usr/bin/env bash
# Install the Debian tools factory runs for real, when missing. Idempotent.
#   scripts/system-deps.sh [local|aws]     (default: local)
# aws:   packer (Debian's 1.6.6 is enough here; modern Packer works too).
# local: also what the local cloud and the tests need: openssh-server and its sftp
#        server (the build host's sshd), docker.io (its Docker engine), python3-pip (the
#        stand-in Miniconda installs the real awscli with the host's pip) and
#        busybox-static (a small root filesystem for the build host's own Docker test);
#        btrfs-progs, xfsprogs and lvm2 (the grow agent's pool backends, tested on loop devices).
set -euo pipefail

need=()
command -v packer >/dev/null 2>&1 || need+=(packer)
if [ "${1:-local}" != aws ]; then
  [ -x /usr/sbin/sshd ] || need+=(openssh-server)
  [ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-sftp-server)
  command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
  /usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
  [ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || need+=(busybox-static)
  command -v mkfs.btrfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.btrfs ] || need+=(btrfs-progs)
  command -v mkfs.xfs >/dev/null 2>&1 || [ -x /usr/sbin/mkfs.xfs ] || need+=(xfsprogs)
  command -v lvcreate >/dev/null 2>&1 || [ -x /usr/sbin/lvcreate ] || need+=(lvm2)
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
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "system-deps: done"
