#!/usr/bin/env bash
# make setup: prepare a Debian/Ubuntu machine to run dataplane labs. Idempotent: every step
# checks first, then says what it did or why it skipped.
#
#   1. Debian packages (bcc, iproute2, iptables, nftables, conntrack, traffic tools)
#   2. kernel headers for bcc: the running kernel's if present, else Debian's generic headers linked in
#   3. bpffs and tracefs mounts
#   4. a project virtual environment (.venv) with the PyPI dependencies, where only Debian's `bcc`
#      module is made importable (not the rest of Debian's dist-packages)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
export DEBIAN_FRONTEND=noninteractive

say()  { printf '  %-10s %s\n' "$1" "$2"; }
step() { printf '\n== %s\n' "$1"; }
die()  { printf '\nsetup failed: %s\n' "$1" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo make setup): it installs packages and mounts bpffs/tracefs"
command -v apt-get >/dev/null || die "apt-get not found: make setup supports Debian and Ubuntu"

ARCH=$(dpkg --print-architecture)
PACKAGES=(
  python3-bpfcc bpfcc-tools libbpf1 bpftool      # bcc (compile + load), libbpf for BPF_PROG_TEST_RUN
  iproute2 iptables nftables conntrack           # netlink, TC, kube-proxy's two rule backends
  iperf3 tcpdump netcat-openbsd iputils-ping curl  # traffic and observation
  python3-venv python3-pip                       # the project environment (system python)
  make gcc
  vagrant                                        # the tests validate the lab VM's Vagrantfile
  ethtool                                        # checksum offload on and off in wire tests
)

step "Debian packages"
missing=()
for p in "${PACKAGES[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then :; else missing+=("$p"); fi
done
if [ ${#missing[@]} -eq 0 ]; then
  say skipped "all ${#PACKAGES[@]} packages already installed"
else
  say installing "${missing[*]}"
  apt-get update -q >/dev/null || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
  say installed "${missing[*]}"
fi

step "perf (dataplane bench profile)"
# Debian names it linux-perf, Ubuntu linux-tools-<kernel>; optional: only `bench profile` needs it
if command -v perf >/dev/null; then
  say skipped "perf is installed"
elif apt-get install -y -q --no-install-recommends linux-perf >/dev/null 2>&1 ||
     apt-get install -y -q --no-install-recommends linux-tools-common "linux-tools-$(uname -r)" >/dev/null 2>&1; then
  say installed "perf"
else
  say skipped "no perf package for this system: dataplane bench profile will say so; the rest works"
fi

step "Kernel headers for bcc"
KREL=$(uname -r)
MODDIR=/lib/modules/$KREL
if [ -e "$MODDIR/build/Makefile" ]; then
  case "$(readlink -f "$MODDIR/build")" in
    *"$KREL"*) say skipped "$MODDIR/build holds the running kernel's own headers: nothing linked" ;;
    *) say skipped "$MODDIR/build already links to $(readlink -f "$MODDIR/build") (the running kernel $KREL has no headers)" ;;
  esac
else
  # The running kernel has no headers package (a custom or cloud kernel). bcc needs only a kernel
  # tree to compile against; Debian's generic headers compile and load TC programs on newer kernels.
  pkg=linux-headers-$ARCH
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    say installing "$pkg (no headers for the running kernel $KREL)"
    apt-get install -y -q --no-install-recommends "$pkg" >/dev/null || die "apt-get install $pkg failed"
  fi
  hdr=$(dpkg-query -W -f='${Depends}' "$pkg" | tr ',' '\n' | sed -n 's/^ *\(linux-headers-[^ ]*\).*/\1/p' | head -1)
  hver=${hdr#linux-headers-}
  [ -d "/lib/modules/$hver" ] || die "$pkg installed but /lib/modules/$hver is missing"
  mkdir -p "$MODDIR"
  ln -sfn "$(readlink -f "/lib/modules/$hver/build")" "$MODDIR/build"
  ln -sfn "$(readlink -f "/lib/modules/$hver/source")" "$MODDIR/source"
  say linked "$MODDIR/build -> $(readlink "$MODDIR/build") (Debian headers $hver; the running kernel $KREL has none)"
fi

step "Filesystems"
mountpoint -q /sys/fs/bpf && say skipped "bpffs already mounted on /sys/fs/bpf" \
  || { mount -t bpf bpf /sys/fs/bpf && say mounted "bpffs on /sys/fs/bpf"; }
if mountpoint -q /sys/kernel/tracing; then
  say skipped "tracefs already mounted on /sys/kernel/tracing"
else
  mount -t tracefs tracefs /sys/kernel/tracing && say mounted "tracefs on /sys/kernel/tracing"
fi

step "Project environment ($VENV)"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  say skipped "$VENV exists"
else
  "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv failed (install python3-venv)"
  say created "$VENV with $("$VENV/bin/python" --version)"
fi
# bcc is Debian's python3-bpfcc (not on PyPI): expose that one module through a directory that
# holds only a link to it, so none of Debian's other dist-packages shadow the venv's.
BCC_SRC=$(/usr/bin/python3 -c 'import bcc, os; print(os.path.dirname(bcc.__file__))' 2>/dev/null) \
  || BCC_SRC=/usr/lib/python3/dist-packages/bcc
[ -d "$BCC_SRC" ] || die "bcc's Python module not found (python3-bpfcc installed?)"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$VENV/bcc-only"
ln -sfn "$BCC_SRC" "$VENV/bcc-only/bcc"
echo "$(readlink -f "$VENV/bcc-only")" > "$SITE/dataplane-bcc.pth"
say linked "bcc from $BCC_SRC (only that module)"
if "$VENV/bin/python" -c 'import dataplane, scapy, pyroute2, click, yaml, pytest' 2>/dev/null \
   && [ "$VENV/.installed" -nt pyproject.toml ]; then
  say skipped "PyPI dependencies already installed"
else
  "$VENV/bin/pip" install -q --disable-pip-version-check -e '.[test]' || die "pip install failed"
  touch "$VENV/.installed"
  say installed "dataplane (editable) with scapy, pyroute2, click, pyyaml, pytest"
fi

step "Check"
"$VENV/bin/python" -c 'import bcc' || die "bcc does not import in $VENV"
"$VENV/bin/dataplane" doctor
