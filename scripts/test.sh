#!/usr/bin/env bash
# The README's test command: installs what the tests need (Mosquitto,
# libLiteRt.so for x86_64 and aarch64, the ARM cross toolchains and
# qemu-user), then runs formatting and lint checks and every test.
# Tests start their own brokers on free loopback ports; nothing is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-deps.sh
# The .deb that tests/service.rs installs with dpkg.
cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.8\.0' || cargo install cargo-deb --locked --version 3.8.0
scripts/package.sh
# The stripped aarch64 and armv7 release binaries that tests/arm.rs runs
# under qemu-user (built here so the tests do not run cargo themselves).
scripts/build-arm.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The ARM targets compile different code (armv7: 32-bit, no LiteRT back end;
# aarch64: c_char is unsigned), so lint them too. Checking needs only the
# rustup targets, not the cross linkers: tests and benches are type-checked
# for the target, nothing is linked for it.
for target in armv7-unknown-linux-gnueabihf aarch64-unknown-linux-gnu; do
  cargo clippy --workspace --all-targets --locked --target "$target" -- -D warnings
done
cargo test --workspace --locked
