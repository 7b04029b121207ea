#!/usr/bin/env bash
# Download CIFAR-10 (binary version), check its MD5 and extract it: DEST/cifar-10-batches-bin.
#
#   scripts/download_cifar10.sh DEST
#
# Exits 1 with one line on stderr when the download, the checksum or the extraction fails, and
# leaves nothing partial behind: everything happens in a temporary folder inside DEST that is
# renamed into place at the end. A stand-in written by `python -m trainer.standin` (marked by a
# STANDIN file) is replaced; any other non-empty DEST/cifar-10-batches-bin is left alone.
# CIFAR10_URL and CIFAR10_MD5 override the source and checksum (tests, local mirrors).
set -euo pipefail

prog="$(basename "$0")"
url="${CIFAR10_URL:-https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz}"
md5="${CIFAR10_MD5:-c32a1d4ab5d03f1284b67883e8d87530}"

die() {
    echo "$prog: $*" >&2
    exit 1
}

if [ "$#" -ne 1 ] || [ -z "$1" ]; then
    echo "usage: $prog DEST  (writes DEST/cifar-10-batches-bin)" >&2
    exit 2
fi
dest="$1"
target="$dest/cifar-10-batches-bin"

if [ -f "$target/data_batch_5.bin" ] && [ -f "$target/test_batch.bin" ] && [ ! -e "$target/STANDIN" ]; then
    echo "$prog: $target already holds CIFAR-10; nothing to do"
    exit 0
fi
if [ -e "$target" ] && [ ! -e "$target/STANDIN" ]; then
    if [ ! -d "$target" ] || [ -n "$(ls -A "$target")" ]; then
        die "$target exists and is not a complete CIFAR-10 or a stand-in; move it away and rerun"
    fi
fi

created_dest=""
if [ ! -d "$dest" ]; then
    mkdir -p "$dest" || die "cannot create $dest"
    created_dest="yes"
fi
work="$(mktemp -d "$dest/.cifar10-download.XXXXXX")" || die "cannot write in $dest"
finished=""
cleanup() {
    rm -rf "$work"
    if [ -n "$created_dest" ] && [ -z "$finished" ]; then
        rmdir "$dest" 2>/dev/null || true  # only if we made it and it is still empty
    fi
}
trap cleanup EXIT
tarball="$work/cifar-10-binary.tar.gz"

if command -v curl >/dev/null 2>&1; then
    status=0
    curl --fail --silent --show-error --location --connect-timeout 10 \
        --speed-limit 1024 --speed-time 60 --output "$tarball" "$url" 2>"$work/err" || status=$?
elif command -v wget >/dev/null 2>&1; then
    status=0
    wget --quiet --tries=1 --timeout=10 --output-document="$tarball" "$url" 2>"$work/err" || status=$?
else
    die "needs curl or wget to download $url"
fi
if [ "$status" -ne 0 ]; then
    reason="$(tr '\n' ' ' <"$work/err" | sed 's/ *$//')"
    die "cannot download $url (offline? ${reason:-exit status $status}); fetch cifar-10-binary.tar.gz elsewhere and extract it into $dest"
fi

if command -v md5sum >/dev/null 2>&1; then
    actual="$(md5sum "$tarball" | cut -d ' ' -f 1)"
elif command -v md5 >/dev/null 2>&1; then
    actual="$(md5 -q "$tarball")"
else
    die "needs md5sum or md5 to check the download"
fi
[ "$actual" = "$md5" ] || die "$url: MD5 $actual, expected $md5 (corrupt or wrong file); nothing was written"

mkdir "$work/extract"
tar -xzf "$tarball" -C "$work/extract" 2>"$work/err" || die "cannot extract $url: $(head -n 1 "$work/err")"
[ -d "$work/extract/cifar-10-batches-bin" ] || die "$url: no cifar-10-batches-bin folder in the archive"

if [ -e "$target" ]; then
    mv "$target" "$work/old"  # an earlier stand-in or an empty folder (checked above)
fi
mv "$work/extract/cifar-10-batches-bin" "$target"
finished="yes"
echo "$prog: CIFAR-10 is in $target"
