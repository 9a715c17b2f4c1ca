#!/usr/bin/env bash
# Installs netwrap from this checkout for every user of the machine:
#   bash install.sh
# - a venv at /opt/netwrap made with the system's /usr/bin/python3 (Debian's
#   python is externally managed, PEP 668: a plain `pip install .` refuses);
#   on Debian and Ubuntu, python3 and python3-venv are installed when missing;
# - /usr/local/bin/netwrap, and its man page and shell completions under
#   /usr/local/share.
# Runs as root: directly when it already is (a fresh system has no sudo),
# through sudo otherwise. pip fetches netwrap's dependencies from PyPI.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=/opt/netwrap
PREFIX=/usr/local

if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
        echo "install.sh: installing for every user needs root, and sudo is not installed: run this as root" >&2
        exit 1
    fi
    exec sudo -- bash install.sh "$@"
fi

if command -v apt-get >/dev/null; then
    missing=()
    for package in python3 python3-venv; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
        [ "$status" = installed ] || missing+=("$package")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update </dev/null
        apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}" </dev/null
    fi
fi

# Built from a copy: pip builds in the source tree, and a root-owned build/
# or egg-info must not be left in the caller's checkout.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -c --exclude=./.git --exclude='*.egg-info' --exclude=./build --exclude=./dist . | tar -x -C "$work"

if ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    /usr/bin/python3 -m venv --clear "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$work" </dev/null

mkdir -p "$PREFIX/bin" "$PREFIX/share/man/man1" "$PREFIX/share/bash-completion/completions" \
    "$PREFIX/share/zsh/site-functions" "$PREFIX/share/fish/vendor_completions.d"
ln -sfn "$VENV/bin/netwrap" "$PREFIX/bin/netwrap"
for file in man/man1/netwrap.1 bash-completion/completions/netwrap zsh/site-functions/_netwrap \
        fish/vendor_completions.d/netwrap.fish; do
    ln -sfn "$VENV/share/$file" "$PREFIX/share/$file"
done
echo "netwrap $("$VENV/bin/netwrap" --version | cut -d' ' -f2) installed: $PREFIX/bin/netwrap (netwrap doctor checks this machine)"
