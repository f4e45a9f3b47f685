#!/usr/bin/env bash
# Fetches libLiteRt.so from the official ai-edge-litert wheel on PyPI and extracts
# it, with the GPU accelerator libLiteRtWebGpuAccelerator.so from the same wheel,
# into runtime/<arch>/ (git-ignored). libLiteRt.so has no RPATH and looks for its
# GPU accelerator in its own folder, so the two must stay side by side.
# Idempotent: a runtime/<arch>/ missing any of the files (e.g. one fetched before
# the accelerator was added) is fetched again.
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
# Everything taken from the wheel's ai_edge_litert/ folder (the same path in
# the x86_64 and aarch64 wheels).
files=(libLiteRt.so libLiteRtWebGpuAccelerator.so)
present=true
[ "$(cat "$dest/VERSION" 2>/dev/null)" = "$version" ] || present=false
for f in "${files[@]}"; do [ -s "$dest/$f" ] || present=false; done
if [ "$present" = true ]; then
  echo "fetch-runtime: ${files[*]} ($version) already present in $dest"
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
"$python" - "$wheel" "$dest" "${files[@]}" <<'PY'
import sys, zipfile
wheel, dest, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        with open(f"{dest}/{name}.tmp", "wb") as f:
            f.write(z.read(f"ai_edge_litert/{name}"))
PY
# Renamed only once every file was extracted, and VERSION last, so an
# interrupted run is simply repeated.
for f in "${files[@]}"; do
  mv "$dest/$f.tmp" "$dest/$f"
  echo "fetch-runtime: installed $dest/$f ($version, $(du -h "$dest/$f" | cut -f1))"
done
echo "$version" > "$dest/VERSION"
