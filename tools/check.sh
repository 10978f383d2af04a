#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the fabric contract on `sim`, the
# simulator's fixed seed set on 3, 5 and 7 replicas, named scenarios, the injected bugs, and
# multi-process clusters on shm and udp with kills, pauses and bad input.
set -euo pipefail
cd "$(dirname "$0")/.."

# A fresh machine has the Rust toolchain; make sure its formatter and linter are there.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo clippy --features inject-bugs -D warnings"
cargo clippy -p rapax --all-targets --features inject-bugs -- -D warnings
echo "== cargo build --release --bins (the daemons the multi-process tests start)"
cargo build --release --bins
echo "== cargo test"
RAPAX_BIN_DIR="$PWD/target/release" cargo test --workspace
