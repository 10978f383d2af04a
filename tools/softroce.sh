#!/usr/bin/env bash
# The soft-RoCE lane: runs RDMA verbs code over rxe (the kernel's software RoCE v2 driver) on a
# machine whose own kernel has no RDMA and no KVM. It boots a stock Debian kernel in a qemu (TCG)
# VM with virtme-ng, which shows the host's root filesystem inside the VM, loads rdma_rxe there,
# adds rxe0 on a dummy netdev of the VM (10.77.0.1) and runs a command in the repository root.
#
#   tools/softroce.sh --setup-only      install what the lane needs (idempotent, fast when done)
#   tools/softroce.sh -- CMD ARGS...    setup, then run CMD inside the VM; exits with CMD's status
#   tools/softroce.sh                   build the RDMA tests, setup, then run the default lane in
#                                       the VM (see default_lane below)
#   tools/softroce.sh --build-tests     only build the RDMA tests and list them for the lane
#
# Runs as root, needs no stdin, and works on a fresh Debian 12 (bookworm) x86_64 machine with
# python3 and the package registries. See docs/softroce.md.
#
# Environment:
#   RAPAX_SOFTROCE_CACHE      where the kernel image, the virtme-ng venv and run files are kept
#                             (default /var/cache/rapax-softroce)
#   RAPAX_SOFTROCE_MEMORY     VM memory, in qemu's syntax (default 2G)
#   RAPAX_SOFTROCE_TIMEOUT_S  wall-clock limit for the whole VM run, boot included; the VM is
#                             killed past it and the script exits 124 (default 1200)
#   RAPAX_SOFTROCE_CPUS       VM vCPUs (default 2)
#   RAPAX_SOFTROCE_BOOT_LIMIT_S  a VM whose guest has not started the command this long after
#                             boot began is stopped and booted again (default 180)
#   RAPAX_SOFTROCE_BOOT_TRIES boots in all before giving up (default 2)
#   RAPAX_SOFTROCE_APPEND     more guest kernel parameters, after the script's own
#
# Inside the VM, CMD sees RAPAX_SOFTROCE_DEVICE (rxe0), RAPAX_SOFTROCE_GID_INDEX (the RoCE v2
# GID index of 10.77.0.1 on rxe0), RAPAX_SOFTROCE_IP and RAPAX_RDMA_CM_ADDR (10.77.0.1), and
# RAPAX_SOFTROCE_GUEST=1.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SELF="$REPO/tools/softroce.sh"
CACHE="${RAPAX_SOFTROCE_CACHE:-/var/cache/rapax-softroce}"
MEMORY="${RAPAX_SOFTROCE_MEMORY:-2G}"
TIMEOUT_S="${RAPAX_SOFTROCE_TIMEOUT_S:-1200}"
CPUS="${RAPAX_SOFTROCE_CPUS:-2}"
BOOT_LIMIT_S="${RAPAX_SOFTROCE_BOOT_LIMIT_S:-180}"
BOOT_TRIES="${RAPAX_SOFTROCE_BOOT_TRIES:-2}"
APPEND="${RAPAX_SOFTROCE_APPEND:-}"

# virtme-ng release known to work here with bookworm's qemu 7.2 and the Debian 6.1 kernel.
VNG_VERSION="1.42"
VENV="$CACHE/venv"
VNG="$VENV/bin/vng"
KDIR="$CACHE/kernel"

APT_PACKAGES=(
    qemu-system-x86   # the VM (TCG: no KVM here)
    qemu-utils        # kept: installing qemu-system-x86 replaces a newer qemu-utils of another suite
    kmod              # modprobe/depmod, on the host for depmod and in the VM for modprobe
    busybox-static    # virtme-ng's initramfs
    iproute2          # `ip` and `rdma`
    rdma-core
    ibverbs-utils     # ibv_devices, ibv_devinfo
    ibverbs-providers # librxe, the userspace half of rxe
    libibverbs-dev
    librdmacm-dev
    perftest          # ib_write_lat
    python3-venv      # only used when python3 is Debian's own (no ensurepip otherwise)
)

log() { printf '== softroce: %s\n' "$*" >&2; }
die() { printf 'softroce: error: %s\n' "$*" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Setup (host side)

setup_apt() {
    local missing=() p
    for p in "${APT_PACKAGES[@]}"; do
        # (Not `| grep -q`: under pipefail, grep closing the pipe early would fail the test.)
        if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt packages: all installed"
        return
    fi
    log "apt packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

setup_vng() {
    if [ -x "$VNG" ] && [[ "$("$VNG" --version 2>/dev/null || true)" == *"$VNG_VERSION"* ]]; then
        log "virtme-ng $VNG_VERSION: installed in $VENV"
        return
    fi
    log "virtme-ng $VNG_VERSION: installing into $VENV"
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    # A venv keeps it apart from the system's packages (no --break-system-packages needed).
    # pyenv's python is fine as it is; Debian's needs python3-venv (installed above).
    # ensurepip runs separately so that its errors show (`venv` hides them); it failed once here
    # for no reason that came back, so it gets a second try.
    python3 -m venv --without-pip "$VENV"
    "$VENV/bin/python" -m ensurepip --default-pip >/dev/null ||
        "$VENV/bin/python" -m ensurepip --default-pip
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "virtme-ng==$VNG_VERSION"
    "$VNG" --version
}

# Sets KVER and VMLINUZ; downloads and unpacks the kernel package on first use.
setup_kernel() {
    if [ -f "$KDIR/version" ]; then
        KVER="$(cat "$KDIR/version")"
    else
        local pkg
        pkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image/{print $2; exit}')"
        if [ -z "$pkg" ]; then
            DEBIAN_FRONTEND=noninteractive apt-get update -q
            pkg="$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image/{print $2; exit}')"
        fi
        [ -n "$pkg" ] || die "cannot resolve linux-image-amd64 to a kernel package"
        log "kernel: downloading $pkg"
        rm -rf "$KDIR"
        mkdir -p "$KDIR/deb"
        # apt-get download writes to the current directory; _apt must be able to write there.
        (cd "$KDIR/deb" && chmod 777 . && apt-get download -q "$pkg")
        dpkg -x "$KDIR"/deb/*.deb "$KDIR/root"
        rm -rf "$KDIR/deb"
        KVER="$(ls "$KDIR/root/lib/modules" 2>/dev/null || ls "$KDIR/root/usr/lib/modules")"
        if [ -z "$KVER" ] || [ "$(printf '%s\n' "$KVER" | wc -l)" -ne 1 ]; then
            die "unexpected layout of $pkg (modules of one kernel expected)"
        fi
        echo "$KVER" >"$KDIR/version"
    fi
    # The image goes beside its modules: given /usr/lib/modules/VER/vmlinuz, virtme-ng takes the
    # host root's /lib/modules for the guest. Given the image in the cache, it would point the
    # guest at the cache's copy of the modules, which the guest cannot see (virtme-ng mounts a
    # tmpfs over /var/cache in the guest), and modprobe would find nothing.
    VMLINUZ="/usr/lib/modules/$KVER/vmlinuz"
    if [ -f "/usr/lib/modules/$KVER/modules.dep" ] && [ -f "/usr/lib/modules/$KVER/.rapax-softroce" ] &&
        [ -f "$VMLINUZ" ]; then
        log "kernel $KVER: modules installed"
        return
    fi
    log "kernel $KVER: installing modules under /usr/lib/modules/$KVER"
    local src="$KDIR/root/lib/modules/$KVER"
    [ -d "$src" ] || src="$KDIR/root/usr/lib/modules/$KVER"
    mkdir -p /usr/lib/modules
    rm -rf "/usr/lib/modules/$KVER"
    cp -a "$src" "/usr/lib/modules/$KVER"
    cp "$KDIR/root/boot/vmlinuz-$KVER" "$VMLINUZ"
    depmod "$KVER"
    touch "/usr/lib/modules/$KVER/.rapax-softroce"
}

setup() {
    [ "$(id -u)" -eq 0 ] || die "must run as root (apt-get, /usr/lib/modules)"
    local t0=$SECONDS t1 t2
    setup_apt
    t1=$SECONDS
    setup_vng
    t2=$SECONDS
    setup_kernel
    log "setup done in $((SECONDS - t0)) s (apt $((t1 - t0)) s, virtme-ng $((t2 - t1)) s," \
        "kernel $((SECONDS - t2)) s; kernel $KVER)"
}

# ---------------------------------------------------------------------------------------------
# The VM

# Host: kills the VM of run directory $1 (timeout, vng and qemu all carry it on their command
# lines).
kill_vm() {
    pkill -KILL -f -- "$1" 2>/dev/null || true
}

# Host: boots the VM and runs `softroce.sh --guest RUN_DIR` in it; RUN_DIR holds the command
# line to run (cmd) and, once it ran, its exit status (status). vng's own exit status is not
# relied on: a missing status file means the guest never got to the end (boot failure, timeout).
run_vm() {
    local run_dir rc status t0
    # Under the repository, not the cache: virtme-ng mounts a tmpfs over /var/cache in the guest,
    # which hides a run directory there from it.
    local runs="${RAPAX_SOFTROCE_RUNS:-$REPO/target/softroce-runs}"
    mkdir -p "$runs"
    run_dir="$(mktemp -d "$runs/run.XXXXXX")"
    printf '%s\n' "$1" >"$run_dir/cmd"

    local rw=(--rwdir "$REPO" --rwdir "$run_dir")
    # cargo writes its registry cache and lock files under CARGO_HOME.
    local cargo_home="${CARGO_HOME:-$HOME/.cargo}"
    [ -d "$cargo_home" ] && rw+=(--rwdir "$cargo_home")
    if [ -n "${CARGO_TARGET_DIR:-}" ] && [ -d "$CARGO_TARGET_DIR" ]; then
        rw+=(--rwdir "$CARGO_TARGET_DIR")
    fi

    # vng runs its helpers (virtme-run, ...) from PATH.
    export PATH="$VENV/bin:$PATH"
    # udev's coldplug in the guest loads every module that matches qemu's devices; under TCG
    # loading kvm_amd alone takes ~8 s. None of these is needed here (crc32_pclmul, which rxe's
    # ICRC uses, is kept).
    local blacklist=kvm,kvm_amd,kvm_intel,ahci,sr_mod,cdrom,iTCO_wdt,i6300esb,pcspkr,powernow_k8
    blacklist+=,lpc_ich,i2c_i801,psmouse,aesni_intel,ghash_clmulni_intel,sha1_ssse3,sha256_ssse3
    blacklist+=,sha512_ssse3,crct10dif_pclmul
    # clocksource=tsc tsc=reliable: under TCG the guest kernel's clocksource watchdog finds the
    # TSC unstable and falls back to the HPET, whose every read is an emulated MMIO access: each
    # clock_gettime becomes a system call of tens of microseconds (perf in the guest showed a
    # data plane spending 55 % of its time in read_hpet, and replication 12-16 x the floor).
    # qemu's TSC is monotonic; told it is reliable, the guest keeps it and the vDSO.
    # --force-9p: bookworm's only virtiofsd is qemu's old C one, which virtme-ng tries, fails to
    # start and gives up on after ~4 s, then falls back to 9p anyway.
    # A boot that never reaches the guest's script (seen once in a few dozen boots: qemu kept
    # both host cores busy for ten minutes without a line from the guest) is killed after
    # BOOT_LIMIT_S and tried again, BOOT_TRIES boots in all: the guest marks its start in the run
    # directory (`booted`), within ~15 s of boot here.
    local attempt=1 vm
    # Stopped from outside (an outer timeout, ^C): take the VM down too, which would otherwise
    # run on (vng and qemu are not this script's foreground job while it waits).
    # shellcheck disable=SC2064 # run_dir is fixed for this run: expand it now
    trap "kill_vm '$run_dir'; rm -rf '$run_dir'; exit 143" TERM INT HUP
    while :; do
        log "booting $KVER under qemu TCG: $CPUS vCPUs, $MEMORY, limit ${TIMEOUT_S} s (boot $attempt of $BOOT_TRIES, guest start within ${BOOT_LIMIT_S} s)"
        t0=$SECONDS
        # The output goes through a pipe: when stdout is a regular file, qemu reopens it and
        # writes from offset 0, over what was written before.
        set +e
        (
            timeout -k 30 "$TIMEOUT_S" "$VNG" --run "$VMLINUZ" --user root --disable-kvm --force-9p \
                --cpus "$CPUS" --memory "$MEMORY" "${rw[@]}" --append "modprobe.blacklist=$blacklist clocksource=tsc tsc=reliable $APPEND" \
                --exec "$(printf '%q --guest %q' "$SELF" "$run_dir")" </dev/null 2>&1 | cat
            exit "${PIPESTATUS[0]}"
        ) &
        vm=$!
        while kill -0 "$vm" 2>/dev/null && [ ! -f "$run_dir/booted" ]; do
            if ((SECONDS - t0 >= BOOT_LIMIT_S)); then
                log "the guest did not start within ${BOOT_LIMIT_S} s: stopping this VM"
                kill_vm "$run_dir"
                break
            fi
            sleep 1
        done
        wait "$vm"
        rc=$?
        set -e
        if [ ! -f "$run_dir/booted" ] && ((attempt < BOOT_TRIES)); then
            attempt=$((attempt + 1))
            continue
        fi
        break
    done
    trap - TERM INT HUP
    log "VM ended after $((SECONDS - t0)) s (vng exit $rc)"
    if [ -f "$run_dir/status" ]; then
        status="$(cat "$run_dir/status")"
    elif [ "$rc" -eq 124 ]; then
        log "timed out after ${TIMEOUT_S} s"
        status=124
    else
        log "the guest wrote no exit status (vng exit $rc)"
        status=125
    fi
    rm -rf "$run_dir"
    return "$status"
}

# Guest: the RoCE v2 GID index whose GID is the IPv4-mapped form of $2 on device $1, port 1.
gid_index_for_ipv4() {
    local dev="$1" ip="$2" want f i
    # shellcheck disable=SC2086 # split the dotted quad into four arguments
    want="$(printf '0000:0000:0000:0000:0000:ffff:%02x%02x:%02x%02x' ${ip//./ })"
    # One grep over the 1024 entries: a process per entry takes minutes under TCG.
    while read -r f; do
        i="${f##*/}"
        if [ "$(cat "/sys/class/infiniband/$dev/ports/1/gid_attrs/types/$i" 2>/dev/null)" = "RoCE v2" ]; then
            echo "$i"
            return 0
        fi
    done < <(grep -l -x -F "$want" /sys/class/infiniband/"$dev"/ports/1/gids/* 2>/dev/null || true)
    return 1
}

guest_uptime() { cut -d' ' -f1 /proc/uptime; }

# The netdev rxe0 sits on in the guest, and its address (hw-profiles/soft-roce.toml's
# gid_index is this address's GID).
RDMA_NETDEV=rapax0
RDMA_IP=10.77.0.1

# 2 MiB huge pages the guest reserves: hw-profiles/soft-roce.toml puts each node's log and control
# block on them (10 pages a node with its 16 MiB log; 3-node clusters, one at a time, and the
# tests' small ones).
GUEST_HUGEPAGES=96

guest_rdma_up() {
    echo "== softroce (guest): up $(guest_uptime) s, reserving $GUEST_HUGEPAGES huge pages"
    echo "$GUEST_HUGEPAGES" > /proc/sys/vm/nr_hugepages
    echo "== softroce (guest): $(awk '/HugePages_Free/ {print $2}' /proc/meminfo) huge pages free"
    echo "== softroce (guest): up $(guest_uptime) s, loading rdma_rxe"
    ip link set lo up
    modprobe rdma_rxe
    # rxe sits on a dummy netdev with an address of its own, not on lo: rdma_cm resolves
    # addresses and routes only through a netdev that is not loopback (on lo,
    # rdma_resolve_route fails with ENODEV). Traffic to that address never leaves the host:
    # rxe loops a packet back when its destination MAC is its own.
    echo "== softroce (guest): up $(guest_uptime) s, adding rxe0 on $RDMA_NETDEV ($RDMA_IP)"
    ip link add "$RDMA_NETDEV" type dummy
    ip addr add "$RDMA_IP/24" dev "$RDMA_NETDEV"
    ip link set "$RDMA_NETDEV" up
    rdma link add rxe0 type rxe netdev "$RDMA_NETDEV"
    # The GID table is filled from the netdev's addresses asynchronously.
    local _
    for _ in $(seq 50); do
        RAPAX_SOFTROCE_GID_INDEX="$(gid_index_for_ipv4 rxe0 "$RDMA_IP")" && break
        sleep 0.1
    done
    [ -n "${RAPAX_SOFTROCE_GID_INDEX:-}" ] || { echo "softroce: no RoCE v2 GID for $RDMA_IP on rxe0" >&2; return 1; }
    export RAPAX_SOFTROCE_DEVICE=rxe0 RAPAX_SOFTROCE_IP="$RDMA_IP" RAPAX_SOFTROCE_GID_INDEX
    # The rdma_cm test of the verbs wrappers connects on this address.
    export RAPAX_RDMA_CM_ADDR="$RDMA_IP"
    export RAPAX_SOFTROCE_GUEST=1

    echo "== softroce (guest): kernel $(uname -r), $(nproc) vCPUs, clocksource $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown), up $(guest_uptime) s"
    echo "== rdma link"
    rdma link
    echo "== ibv_devices"
    ibv_devices
    echo "== ibv_devinfo -d rxe0"
    ibv_devinfo -d rxe0
    echo "== GID table of rxe0 port 1 (entries in use: index, GID, type)"
    # From sysfs with one grep: `ibv_devinfo -v` queries all 1024 entries, ~5 s under TCG.
    local sys=/sys/class/infiniband/rxe0/ports/1 path gid
    grep -H -v -x -F 0000:0000:0000:0000:0000:0000:0000:0000 "$sys"/gids/* |
        while IFS=: read -r path gid; do
            echo "  ${path##*/}  $gid  $(cat "$sys/gid_attrs/types/${path##*/}" 2>/dev/null)"
        done
    echo "== using rxe0 GID index $RAPAX_SOFTROCE_GID_INDEX (RoCE v2, $RDMA_IP)"
}

guest_main() {
    local run_dir="$1" cmd rc
    export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH"
    cmd="$(cat "$run_dir/cmd")"
    : >"$run_dir/booted"
    set +e
    # errexit stays on for CMD: a quoted simple command exits with its own status either way,
    # and default_lane stops at its first failing step.
    (
        set -e
        guest_rdma_up
        cd "$REPO"
        echo "== softroce (guest): up $(guest_uptime) s, running: $cmd"
        eval "$cmd"
    )
    rc=$?
    set -e
    echo "$rc" >"$run_dir/status"
    sync
    echo "== softroce (guest): up $(guest_uptime) s, exit status $rc"
    return "$rc"
}

# ---------------------------------------------------------------------------------------------
# The default lane (runs inside the VM, in the repository root)

# ib_write_lat server and client in the same VM, both on rxe0: the client connects to the
# server's TCP port (18515) on 10.77.0.1 to swap QP numbers, then RDMA-writes over RoCE v2.
# perftest turns cycles into microseconds with a clock rate it measures at start against
# gettimeofday; under TCG on a busy host that fit can fail ("Correlation coefficient r^2 < 0.9"),
# and then it prints inf for every figure and still exits 0. Such a run is tried again.
ib_write_lat_once() {
    local args=(-d "$RAPAX_SOFTROCE_DEVICE" -x "$RAPAX_SOFTROCE_GID_INDEX" -s "$1" -n 1000) srv rc _
    timeout 300 ib_write_lat "${args[@]}" >/tmp/ib_write_lat.server 2>&1 &
    srv=$!
    # The client does not retry its connect: wait until the server listens.
    for _ in $(seq 300); do
        ss -Hltn 'sport = :18515' | grep -q . && break
        sleep 0.1
    done
    rc=0
    timeout 300 ib_write_lat "${args[@]}" "$RAPAX_SOFTROCE_IP" 2>&1 | tee /tmp/ib_write_lat.client ||
        rc=${PIPESTATUS[0]}
    if ! wait "$srv"; then
        echo "ib_write_lat server failed:"
        cat /tmp/ib_write_lat.server
        [ "$rc" -ne 0 ] || rc=1
    fi
    [ "$rc" -eq 0 ] || return "$rc"
    # The figures: the line after the header that starts with "#bytes".
    if awk '/#bytes/{getline; print; exit}' /tmp/ib_write_lat.client | grep -q -E 'inf|nan' ||
        ! grep -q '#bytes' /tmp/ib_write_lat.client; then
        return 3
    fi
}

# ib_write_lat_pair BYTES: one valid run of ib_write_lat with writes of BYTES.
ib_write_lat_pair() {
    local try rc
    for try in 1 2 3; do
        echo "== ib_write_lat -d $RAPAX_SOFTROCE_DEVICE -x $RAPAX_SOFTROCE_GID_INDEX -s $1 -n 1000" \
            "(server and client on rxe0), try $try"
        rc=0
        ib_write_lat_once "$1" || rc=$?
        [ "$rc" -eq 3 ] || return "$rc"
        echo "== ib_write_lat: no valid figures (clock rate not measured), trying again"
    done
    return 1
}

# Runs with errexit on: the first failing step ends the lane with its status.
default_lane() {
    # 64 bytes, the bench's value, and 171, the log entry the leader writes for one command of
    # it, which rapax bench's floor writes (tools/src/drill.rs, bench_entry_bytes; its test
    # holds the two equal).
    ib_write_lat_pair 64
    ib_write_lat_pair 171
    # The RDMA tests, built on the host before the VM boots (compiling under TCG is many times
    # slower): `tools/softroce.sh --build-tests` writes their binaries and test filters to
    # target/softroce-tests.txt, one "BINARY FILTER" line each. On rxe0 they run for real: the
    # verbs wrappers (RC loopback, revoke by access flags, rdma_cm), the rdma fabric's contract
    # suite with revocation completeness, and the RDMA WRITE floor.
    local list=target/softroce-tests.txt bin filter
    [ -f "$list" ] || die "$list missing: run tools/softroce.sh --build-tests on the host first"
    while read -r bin filter; do
        echo "== $bin $filter"
        "$bin" $filter --test-threads=1 --nocapture
    done <"$list"
    # A 3-node cluster on the rdma fabric, one node per process (the daemons built on the host
    # by `cargo build --release --bins`): rapax bench (replication beside rapax's own RDMA WRITE
    # round trip of the same run; ib_write_lat's figure is above; with --loaded-floor, the
    # leader's own round trip under the run's load beside it), then 10 kills of the leader,
    # every one recovered and the history linearizable, or the lane fails.
    local rapax=target/release/rapax
    [ -x "$rapax" ] || die "$rapax missing: run cargo build --release --bins on the host first"
    mkdir -p target/lanes
    echo "== rapax preflight on the soft-RoCE profile"
    "$rapax" preflight --profile hw-profiles/soft-roce.toml --replicas 3
    echo "== rapax bench on rdma (soft-RoCE), 3 replicas"
    "$rapax" bench --profile hw-profiles/soft-roce.toml --replicas 3 --ops 2000 --loaded-floor \
        --dir /tmp/rapax-rdma-bench --json target/lanes/rdma-bench.json
    echo "== rapax failover on rdma (soft-RoCE), 3 replicas, 10 kills"
    "$rapax" failover --profile hw-profiles/soft-roce.toml --replicas 3 --kills 10 \
        --dir /tmp/rapax-rdma-failover --json target/lanes/rdma-failover.json
}

# On the host: builds the RDMA test binaries and lists them for default_lane.
build_tests() {
    cd "$REPO"
    mkdir -p target
    cargo test --release -p rapax-ffi -p rapax-dataplane --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    name, kinds = m["target"]["name"], m["target"]["kind"]
    if name == "ibverbs_loopback":
        print(m["executable"], "")
    elif name == "rapax_dataplane" and "lib" in kinds:
        print(m["executable"], "fabric::rdma")
' >target/softroce-tests.txt
    [ "$(wc -l <target/softroce-tests.txt)" -ge 2 ] || die "RDMA test binaries not found"
    cat target/softroce-tests.txt
}

# ---------------------------------------------------------------------------------------------

case "${1:-}" in
    --guest)
        [ $# -eq 2 ] || die "usage: $0 --guest RUN_DIR"
        guest_main "$2"
        ;;
    --build-tests)
        build_tests
        ;;
    --setup-only)
        [ $# -eq 1 ] || die "--setup-only takes no arguments"
        setup
        ;;
    --)
        shift
        [ $# -ge 1 ] || die "usage: $0 -- CMD ARGS..."
        setup
        run_vm "$(printf '%q ' "$@")"
        ;;
    "")
        build_tests
        setup
        run_vm default_lane
        ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        ;;
    *)
        die "unknown argument '$1' (try --help; put a command after --)"
        ;;
esac
