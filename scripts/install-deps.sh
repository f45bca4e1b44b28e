#!/usr/bin/env bash
# Installs the system packages a command of this project needs, idempotently: nothing happens when
# they are all present. As root it runs apt-get itself, otherwise through sudo when sudo works
# without a password prompt; when neither can, it stops with the exact command to run, naming each
# missing package, before any build starts.
#
#   scripts/install-deps.sh quickstart   # building and running bert-native: HDF5's headers
#   scripts/install-deps.sh test         # the test command: also Mesa's lavapipe (wgpu without a
#                                        # GPU), Python's pip and venv (the test checkpoint and the
#                                        # Triton client), Chromium, Node.js and npm (the browser test),
#                                        # iproute2 and nftables (two hosts in network
#                                        # namespaces, and a lossy link between them)
set -euo pipefail

case "${1:-}" in
  quickstart) packages=(libhdf5-dev pkg-config) ;;
  test) packages=(libhdf5-dev pkg-config mesa-vulkan-drivers libvulkan1 python3-pip python3-venv
                  chromium curl nodejs iproute2 nftables)
        # Debian ships npm apart from nodejs; NodeSource's nodejs includes it (and conflicts with it).
        command -v npm >/dev/null 2>&1 || packages+=(npm) ;;
  *) echo "usage: $0 quickstart|test" >&2; exit 2 ;;
esac

if ! command -v dpkg >/dev/null 2>&1; then
  echo "install-deps: not a Debian-family system; make sure these (or your system's equivalents) are installed: ${packages[*]}" >&2
  exit 0
fi

missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=(env)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo env)
else
  echo "install-deps: missing system packages: ${missing[*]}" >&2
  echo "install-deps: this needs root; run, then start again:" >&2
  echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
