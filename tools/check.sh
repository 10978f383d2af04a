#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests, the fabric contract on every backend
# present, the simulator's fixed seed set on 3, 5 and 7 replicas, named scenarios, the injected
# bugs, multi-process clusters on shm and udp with kills, pauses, partitions (network
# namespaces) and bad input, and the soft-RoCE lane (RDMA verbs over rxe in a VM).
#
# Runs as root on Debian 12: it installs the system packages it needs (rdma-core, DPDK,
# libclang for the bindings; iproute2 for the partition tests; qemu and a kernel for the
# soft-RoCE lane), so a fresh machine with only the Rust toolchain passes.
#
#   RAPAX_SKIP_SOFTROCE=1   skip the soft-RoCE lane (it boots a VM: about a minute or more)
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
stage() { echo "== $* (at $(($(date +%s) - started)) s)"; }

# A fresh machine has the Rust toolchain; make sure its formatter and linter are there.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi

stage "system packages"
ffi/install-deps.sh
if ! command -v ip >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q iproute2
fi
# The bindings must really be built here: a missing library is an error, not a stub.
export RAPAX_REQUIRE_RDMA=1 RAPAX_REQUIRE_DPDK=1

stage "cargo fmt --check"
cargo fmt --all -- --check
stage "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
stage "cargo clippy --features inject-bugs -D warnings"
cargo clippy -p rapax --all-targets --features inject-bugs -- -D warnings
stage "cargo build --release --bins (the daemons the multi-process tests start)"
cargo build --release --bins
stage "cargo test"
RAPAX_BIN_DIR="$PWD/target/release" cargo test --workspace

# The DPDK lane: benchmarks (figures, not pass/fail: no wall-clock thresholds) and fail-over
# drills on net_memif between node processes; a drill fails the run unless every fail-over
# recovers and the history is linearizable.
stage "dpdk lane: rapax bench on dpdk-memif and on udp, same machine"
mkdir -p target/lanes
target/release/rapax bench --profile hw-profiles/dpdk-memif.toml --replicas 3 --ops 20000 \
    --dir /dev/shm/rapax-ci-dpdk-bench --json target/lanes/dpdk-bench.json
target/release/rapax bench --profile hw-profiles/udp-local.toml --replicas 3 --ops 20000 \
    --dir /dev/shm/rapax-ci-udp-bench --json target/lanes/udp-bench.json
stage "dpdk lane: rapax failover on dpdk-memif, 10 kills"
target/release/rapax failover --profile hw-profiles/dpdk-memif.toml --replicas 3 --kills 10 \
    --dir /dev/shm/rapax-ci-dpdk-failover --json target/lanes/dpdk-failover.json
stage "dpdk lane: rapax failover on dpdk-memif, 10 kills, 1% of frames dropped"
sed 's/^fault_drop_ppm = 0 /fault_drop_ppm = 10000 /' hw-profiles/dpdk-memif.toml \
    > target/lanes/dpdk-memif-loss.toml
grep -q '^fault_drop_ppm = 10000 ' target/lanes/dpdk-memif-loss.toml
target/release/rapax failover --profile target/lanes/dpdk-memif-loss.toml --replicas 3 --kills 10 \
    --dir /dev/shm/rapax-ci-dpdk-loss --json target/lanes/dpdk-failover-loss.json

if [ "${RAPAX_SKIP_SOFTROCE:-0}" != 1 ]; then
    stage "soft-RoCE lane"
    tools/softroce.sh
fi
stage "done"
