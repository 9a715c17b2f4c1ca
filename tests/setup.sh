#!/usr/bin/env bash
# Installs what netwrap's tests and benchmarks need, on Debian 12, as root.
# Idempotent and non-interactive: CI runs it before every test run.
#   - system packages (apt), with tshark's debconf question answered up front
#   - /dev/net/tun usable by unprivileged users (0666, as most distros ship it)
#   - the venv /opt/netwrap-venv from Debian's /usr/bin/python3: the test user
#     must be able to run the interpreter, which rules out one under /root
#   - netwrap (editable) and its test and benchmark dependencies in that venv
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=/opt/netwrap-venv
PACKAGES=(
    passt slirp4netns nftables iproute2 uidmap tshark iperf3 dnsutils wrk sockperf
    curl openssl python3-venv iputils-ping procps psmisc util-linux kmod ca-certificates libcap2-bin
    groff-base zsh fish git  # tests/packaging: the man page renders, completions parse, sdist vs git
)

if [ "$(id -u)" -ne 0 ]; then
    echo "tests/setup.sh: run as root" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# wireshark-common asks whether non-root users may capture; never prompt.
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections

missing=()
for package in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$package")
done
# Everything present: skip apt entirely (fast, and works without a mirror).
# NETWRAP_SETUP_APT=always forces the update + install anyway.
if [ "${#missing[@]}" -gt 0 ] || [ "${NETWRAP_SETUP_APT:-}" = always ]; then
    apt-get -o DPkg::Lock::Timeout=300 update </dev/null
    apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${PACKAGES[@]}" </dev/null
fi

if [ ! -c /dev/net/tun ]; then
    modprobe tun 2>/dev/null || true
fi
if [ ! -c /dev/net/tun ]; then
    mkdir -p /dev/net
    mknod -m 0666 /dev/net/tun c 10 200
fi
if [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    chmod 0666 /dev/net/tun
fi

if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    /usr/bin/python3 -m venv --clear "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,bench]' </dev/null
# A third-party backend, found only through the netwrap.backends entry point
# (tests/e2e/test_options.py). Installed as a package, not editable: the test
# user must be able to read it, and a build dir in the tree is not wanted.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-build-isolation \
    ./tests/plugins/netwrap-loopback </dev/null
rm -rf tests/plugins/netwrap-loopback/build tests/plugins/netwrap-loopback/*.egg-info
