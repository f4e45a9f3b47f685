#!/usr/bin/env bash
# Builds stripped release binaries of edge-infer for ARM boards, without
# Docker: rustup targets + Debian's cross linkers (scripts/setup-deps.sh
# installs both; the linkers are named in .cargo/config.toml).
#
#   scripts/build-arm.sh                 # both targets
#   scripts/build-arm.sh aarch64         # or armv7; extra arguments go to cargo build
#
#   aarch64 -> target/aarch64-unknown-linux-gnu/release/edge-infer      (64-bit Pi 3/4/5, i.MX 8, Jetson)
#   armv7   -> target/armv7-unknown-linux-gnueabihf/release/edge-infer  (32-bit Raspberry Pi OS, armhf)
#
# For each binary it prints the size (and fails if the aarch64 one is over
# its 8 MB budget), checks that it is an ARM ELF without a symbol table, and
# prints the newest glibc symbol version it needs: a board's glibc must be at
# least that (Debian 12 / Raspberry Pi OS bookworm / Ubuntu 22.04 or newer for
# a build on Debian 12; for older boards build with `cross`, see cross/README.md).
# Stdout gets one line per binary: its path.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

say() { printf 'build-arm: %s\n' "$*" >&2; }

# Size budget of the stripped aarch64 binary (README "Deploying to ARM").
budget=8000000

selection=all
if [ $# -gt 0 ]; then
  case "$1" in
    all|aarch64|arm64|armv7|armhf) selection="$1"; shift ;;
    -h|--help) sed -n '2,18p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) ;; # only cargo arguments
    *) say "unknown target '$1' (expected aarch64, armv7 or all)"; exit 2 ;;
  esac
fi
case "$selection" in
  all) targets=(aarch64 armv7) ;;
  aarch64|arm64) targets=(aarch64) ;;
  armv7|armhf) targets=(armv7) ;;
esac

triple_of() { case "$1" in aarch64) echo aarch64-unknown-linux-gnu ;; armv7) echo armv7-unknown-linux-gnueabihf ;; esac; }
gnu_of() { case "$1" in aarch64) echo aarch64-linux-gnu ;; armv7) echo arm-linux-gnueabihf ;; esac; }
machine_of() { case "$1" in aarch64) echo AArch64 ;; armv7) echo ARM ;; esac; }

missing=()
for t in "${targets[@]}"; do
  command -v "$(gnu_of "$t")-gcc" >/dev/null 2>&1 || missing+=("$(gnu_of "$t")-gcc")
  if command -v rustup >/dev/null 2>&1; then
    rustup target list --installed | grep -qx "$(triple_of "$t")" || missing+=("rust target $(triple_of "$t")")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  say "missing: ${missing[*]}; run scripts/setup-deps.sh (it installs them)"
  exit 1
fi

target_dir="${CARGO_TARGET_DIR:-$root/target}"
paths=()
for t in "${targets[@]}"; do
  triple="$(triple_of "$t")"
  gnu="$(gnu_of "$t")"
  env_triple="$(echo "$triple" | tr 'a-z-' 'A-Z_')"
  say "building $triple (release, stripped)"
  start=$SECONDS
  # The linker is also set in .cargo/config.toml; the environment wins over
  # any other cargo config the user may have.
  env "CARGO_TARGET_${env_triple}_LINKER=${gnu}-gcc" \
    cargo build --release --locked --target "$triple" -p edge-infer --bin edge-infer "$@"
  bin="$target_dir/$triple/release/edge-infer"
  [ -x "$bin" ] || { say "cargo did not produce $bin"; exit 1; }

  header="$("${gnu}-readelf" -h "$bin")"
  grep -q "Machine: *$(machine_of "$t")\$" <<<"$header" || {
    say "$bin is not an $(machine_of "$t") ELF:"; printf '%s\n' "$header" >&2; exit 1; }
  if "${gnu}-readelf" -S "$bin" | grep -q '\.symtab'; then
    say "$bin still has a symbol table (profile.release.strip?)"; exit 1
  fi
  glibc="$("${gnu}-readelf" -V "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -uV | tail -n1)"
  size=$(stat -c %s "$bin")
  mib=$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')
  line="$triple: $bin: $size bytes ($mib MiB), stripped, needs ${glibc:-no versioned glibc symbols} or newer; built in $((SECONDS - start)) s"
  if [ "$t" = aarch64 ]; then
    if [ "$size" -gt "$budget" ]; then
      say "$line"
      say "OVER BUDGET: the aarch64 binary must be at most $budget bytes (8 MB)"
      exit 1
    fi
    line="$line; budget 8 MB ($budget bytes): ok"
  fi
  say "$line"
  paths+=("$bin")
done
printf '%s\n' "${paths[@]}"
