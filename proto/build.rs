//! Compiles `tern/v1/tern.proto` (client protocol) and `tern/link/v1/link.proto` (internal
//! gateway <-> dispatch links) with protox (pure Rust, no system `protoc`) and prost-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["tern/v1/tern.proto", "tern/link/v1/link.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["."])?;
    // `bytes` fields become `bytes::Bytes`, so payloads are shared, not copied.
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
