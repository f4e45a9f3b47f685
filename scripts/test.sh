#!/usr/bin/env bash
# The README's test command: installs what the tests need (Mosquitto,
# libLiteRt.so), then runs formatting and lint checks and every test.
# Tests start their own brokers on free loopback ports; nothing is skipped.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/setup-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
