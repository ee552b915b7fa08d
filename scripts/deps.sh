#!/bin/sh
# Installs the Debian packages keel needs to build and test, if any are
# missing. As root it runs apt-get; otherwise it prints the exact command.
set -eu
PKGS="build-essential pkg-config clang libuv1-dev liblmdb-dev libcmocka-dev libxxhash-dev libedit-dev python3 python3-pytest python3-xxhash redis-server redis-tools nftables"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "deps: installing$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends $missing
else
    echo "deps: missing packages; run as root:"
    echo "  sudo apt-get install -y$missing"
    exit 1
fi
