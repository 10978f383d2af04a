//! Finds rdma-core (libibverbs, librdmacm) and DPDK with pkg-config, generates their bindings
//! with bindgen, and compiles the C wrappers of their `static inline` hot path (bindgen's
//! `wrap_static_fns`) and the hand-written shims in `shim/`.
//!
//! Each library found and bound sets a cfg (`rapax_rdma`, `rapax_dpdk`); one that is not found,
//! or whose bindings cannot be generated (no libclang), leaves its module a stub whose safe API
//! returns `Error::NotBuilt` with the reason recorded here. `RAPAX_REQUIRE_RDMA=1` and
//! `RAPAX_REQUIRE_DPDK=1` turn that absence into a build error.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the build found for one library, or why it is absent.
type Probe = Result<(), String>;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(rapax_rdma)");
    println!("cargo::rustc-check-cfg=cfg(rapax_dpdk)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=shim");
    for var in [
        "RAPAX_REQUIRE_RDMA",
        "RAPAX_REQUIRE_DPDK",
        "PKG_CONFIG",
        "PKG_CONFIG_PATH",
        "PKG_CONFIG_LIBDIR",
        "PKG_CONFIG_SYSROOT_DIR",
        "LIBCLANG_PATH",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let shim_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("shim");

    settle(
        "rapax_rdma",
        "RAPAX_FFI_RDMA_ABSENT",
        "RAPAX_REQUIRE_RDMA",
        "rdma-core (libibverbs, librdmacm)",
        "apt-get install -y libibverbs-dev librdmacm-dev ibverbs-providers libclang-dev pkg-config \
         (or run ffi/install-deps.sh)",
        bind_rdma(&out_dir, &shim_dir),
    );
    settle(
        "rapax_dpdk",
        "RAPAX_FFI_DPDK_ABSENT",
        "RAPAX_REQUIRE_DPDK",
        "DPDK (libdpdk)",
        "apt-get install -y libdpdk-dev dpdk libclang-dev pkg-config (or run ffi/install-deps.sh)",
        bind_dpdk(&out_dir, &shim_dir),
    );
}

/// Sets the library's cfg when it was bound; otherwise records why it is absent for the stub's
/// error, or fails the build when the environment requires the library.
fn settle(cfg: &str, absent_env: &str, require_env: &str, what: &str, install: &str, probe: Probe) {
    match probe {
        Ok(()) => println!("cargo::rustc-cfg={cfg}"),
        Err(why) => {
            if env::var(require_env).is_ok_and(|v| v == "1") {
                panic!("{require_env}=1 but {what} cannot be bound: {why}. Install it: {install}");
            }
            // One line: the value becomes a `&'static str` through `env!`.
            let why = why.replace(['\n', '\r'], " ");
            println!("cargo::rustc-env={absent_env}={why}");
        }
    }
}

/// Runs bindgen, turning its panic when libclang cannot be loaded into an absence reason.
fn generate(builder: bindgen::Builder, what: &str) -> Result<bindgen::Bindings, String> {
    // bindgen panics ("Unable to find libclang") instead of returning an error when libclang is
    // missing; a machine with the library's headers but no libclang gets the stub, not a failure.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let generated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.generate()));
    std::panic::set_hook(previous_hook);
    match generated {
        Ok(Ok(bindings)) => Ok(bindings),
        Ok(Err(e)) => Err(format!("bindgen failed on the {what} headers: {e}")),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "bindgen panicked".to_string());
            Err(format!(
                "{what} was found by pkg-config but bindgen could not run ({message}); \
                 install libclang-dev"
            ))
        }
    }
}

fn bind_rdma(out_dir: &Path, shim_dir: &Path) -> Probe {
    let mut include_paths = Vec::new();
    for lib in ["libibverbs", "librdmacm"] {
        let found = pkg_config::Config::new().probe(lib).map_err(|e| {
            format!(
                "rdma-core not found by pkg-config at build time ({lib}: {})",
                first_line(&e)
            )
        })?;
        include_paths.extend(found.include_paths);
    }
    let header = shim_dir.join("verbs.h");
    let wrappers = out_dir.join("verbs_static");
    let builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_args(include_paths.iter().map(|p| format!("-I{}", p.display())))
        .allowlist_function("ibv_.*|___ibv_query_port|rdma_.*")
        .allowlist_type("ibv_.*|rdma_.*")
        .allowlist_var("IBV_.*|RDMA_.*|AF_INET|AF_INET6")
        // The exported `ibv_query_port` takes the old, shorter attribute struct; the header's
        // `ibv_query_port` macro calls the static inline `___ibv_query_port`, bound instead.
        .blocklist_function("ibv_query_port")
        .prepend_enum_name(false)
        .derive_default(true)
        .generate_comments(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    let bindings = generate(builder, "rdma-core")?;
    bindings
        .write_to_file(out_dir.join("verbs.rs"))
        .map_err(|e| format!("cannot write the rdma-core bindings: {e}"))?;

    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c"))
        .include(shim_dir)
        .warnings(false);
    for p in &include_paths {
        cc.include(p);
    }
    cc.try_compile("rapax_verbs_static")
        .map_err(|e| format!("cannot compile the rdma-core static-inline wrappers: {e}"))?;
    Ok(())
}

fn bind_dpdk(out_dir: &Path, shim_dir: &Path) -> Probe {
    pkg_config::Config::new().probe("libdpdk").map_err(|e| {
        format!(
            "DPDK not found by pkg-config at build time (libdpdk: {})",
            first_line(&e)
        )
    })?;
    // DPDK's cflags carry more than include paths (`-include rte_config.h`, `-march=...`): pass
    // them raw to both clang and cc, so the bindings and the wrappers see one configuration.
    let pkg_config = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let cflags = Command::new(&pkg_config)
        .args(["--cflags", "libdpdk"])
        .output()
        .map_err(|e| format!("cannot run {pkg_config} --cflags libdpdk: {e}"))?;
    if !cflags.status.success() {
        return Err(format!(
            "{pkg_config} --cflags libdpdk failed: {}",
            String::from_utf8_lossy(&cflags.stderr).trim()
        ));
    }
    let cflags: Vec<String> = String::from_utf8_lossy(&cflags.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let defines = ["-DALLOW_EXPERIMENTAL_API".to_string()];

    let header = shim_dir.join("dpdk.h");
    let wrappers = out_dir.join("dpdk_static");
    let builder = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_args(cflags.iter().chain(&defines))
        .clang_arg(format!("-I{}", shim_dir.display()))
        .allowlist_function(
            "rte_eal_.*|rte_eth_.*|rte_pktmbuf_.*|rte_mempool_.*|rte_ring_create|rte_ring_free|rte_lcore_.*|rte_socket_id|rte_strerror|rapax_.*",
        )
        .allowlist_type("rte_eth_.*|rte_mbuf|rte_mempool|rte_ring|rte_ether_addr")
        .allowlist_var("RTE_ETH_.*|RTE_MBUF_.*|RTE_PKTMBUF_.*|RTE_MAX_.*|RTE_ETHER_.*|RING_F_.*|SOCKET_ID_ANY")
        .prepend_enum_name(false)
        .derive_default(true)
        .generate_comments(false)
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    let bindings = generate(builder, "DPDK")?;
    bindings
        .write_to_file(out_dir.join("dpdk.rs"))
        .map_err(|e| format!("cannot write the DPDK bindings: {e}"))?;

    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c"))
        .file(shim_dir.join("dpdk_shim.c"))
        .include(shim_dir)
        .warnings(false);
    for flag in cflags.iter().chain(&defines) {
        cc.flag(flag);
    }
    cc.try_compile("rapax_dpdk_static")
        .map_err(|e| format!("cannot compile the DPDK static-inline wrappers and shim: {e}"))?;
    // `rte_eth_from_rings` lives in the net_ring driver, which pkg-config's shared `Libs` leave
    // to the EAL's plugin loading; link it so ports can be made from rings.
    println!("cargo::rustc-link-lib=rte_net_ring");
    Ok(())
}

/// The line of a pkg-config error that says what is missing.
fn first_line(e: &pkg_config::Error) -> String {
    let text = e.to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().next().unwrap_or_default().to_string();
    lines
        .find(|l| l.contains("was not found") || l.contains("could not find"))
        .map_or(first, str::to_string)
}
