//! Enables `cfg(scylla_live)` when `TERN_SCYLLA_NODES` is set, so the live conformance tests
//! run against a node then and show as ignored (skipped, with the reason) otherwise.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(scylla_live)");
    println!("cargo:rerun-if-env-changed=TERN_SCYLLA_NODES");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("TERN_SCYLLA_NODES").is_some_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=scylla_live");
    }
}
