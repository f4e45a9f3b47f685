#!/usr/bin/env bash
# Fetches libLiteRt.so from the official ai-edge-litert wheel on PyPI and extracts
# only the shared library into runtime/<arch>/ (git-ignored). Idempotent.
#
#   scripts/fetch-runtime.sh            # host architecture
#   scripts/fetch-runtime.sh aarch64    # for an ARM64 board / qemu tests
set -euo pipefail

version="${LITERT_VERSION:-2.3.0}"
arch="${1:-$(uname -m)}"
case "$arch" in
  x86_64|amd64) arch=x86_64 ;;
  aarch64|arm64) arch=aarch64 ;;
  armv7*|armhf)
    echo "fetch-runtime: no ai-edge-litert wheel exists for armv7; on armv7 boards point" >&2
    echo "  [runtime] library at the board's libtensorflowlite_c.so instead." >&2
    exit 2 ;;
  *) echo "fetch-runtime: unsupported architecture '$arch' (expected x86_64 or aarch64)" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/runtime/$arch"
if [ -s "$dest/libLiteRt.so" ] && [ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ]; then
  echo "fetch-runtime: $dest/libLiteRt.so ($version) already present"
  exit 0
fi

python="${PYTHON:-python3}"
command -v "$python" >/dev/null || { echo "fetch-runtime: python3 with pip is required" >&2; exit 1; }
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# The library is identical across Python tags; any cp3x wheel for the platform carries it.
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --platform "manylinux_2_27_${arch}" --python-version 3.11 \
  "ai-edge-litert==${version}" -d "$tmp"
wheel="$(ls "$tmp"/ai_edge_litert-*.whl 2>/dev/null | head -n1)"
[ -n "$wheel" ] || { echo "fetch-runtime: pip did not produce an ai-edge-litert wheel" >&2; exit 1; }

mkdir -p "$dest"
"$python" - "$wheel" "$dest" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    data = z.read("ai_edge_litert/libLiteRt.so")
with open(f"{dest}/libLiteRt.so.tmp", "wb") as f:
    f.write(data)
PY
mv "$dest/libLiteRt.so.tmp" "$dest/libLiteRt.so"
echo "$version" > "$dest/VERSION"
echo "fetch-runtime: installed $dest/libLiteRt.so ($version, $(du -h "$dest/libLiteRt.so" | cut -f1))"
