#!/usr/bin/env bash
# Builds the Debian package target/debian/edge-infer_<version>-1_amd64.deb
# with cargo-deb (metadata: [package.metadata.deb] in Cargo.toml): release
# build of the daemon, systemd unit, default config (conffile), shipped
# models, libLiteRt.so and its GPU accelerator.
#
#   scripts/package.sh              # fetch the runtime if needed, cargo deb --locked
#   scripts/package.sh --fast       # extra arguments go to cargo deb
#
# Needs cargo-deb: cargo install cargo-deb --locked
# Prints the .deb path and size; the last line of stdout is the path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'package: %s\n' "$*" >&2; }

case "$(uname -m)" in
  x86_64) ;;
  *) say "the package metadata ships runtime/x86_64/libLiteRt.so; build on x86_64 (amd64)"; exit 2 ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
  say "cargo-deb is not installed; run: cargo install cargo-deb --locked"
  exit 1
fi

# The runtime library is packaged, not committed: fetch it (idempotent).
"$root/scripts/fetch-runtime.sh" x86_64 >&2

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)"
# Stale packages of other versions would confuse `target/debian/edge-infer_*.deb` globs.
find target/debian -maxdepth 1 -name 'edge-infer_*.deb' ! -name "edge-infer_${version}-*" -delete 2>/dev/null || true

say "building with $(cargo deb --version)"
out="$(cargo deb --locked "$@")"
deb="$(printf '%s\n' "$out" | tail -n1)"
[ -f "$deb" ] || { say "cargo deb did not report a .deb (output: $out)"; exit 1; }
deb="$(realpath "$deb")"

say "$(du -h "$deb" | cut -f1) ($(stat -c %s "$deb") bytes): $deb"
dpkg-deb --info "$deb" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\|Recommends\|Suggests\|Installed-Size\):/  \1:/p' >&2
echo "$deb"
