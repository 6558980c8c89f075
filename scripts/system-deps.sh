#!/usr/bin/env bash
# Install the Debian tools factory's local cloud and tests run for real, when missing:
# packer (Debian's 1.6.6 is enough here), openssh-server (the build host's sshd),
# docker.io (the build host's Docker engine) and busybox-static (the root filesystem of
# the container the bake check starts). Idempotent: does nothing when all are present.
set -euo pipefail

need=()
command -v packer >/dev/null 2>&1 || need+=(packer)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
[ -x /usr/lib/openssh/sftp-server ] || need+=(openssh-sftp-server)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] || command -v busybox >/dev/null 2>&1 || need+=(busybox-static)

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
