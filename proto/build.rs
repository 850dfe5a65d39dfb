//! Compiles `tern/v1/tern.proto` with protox (pure Rust, no system `protoc`) and prost-build.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "tern/v1/tern.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["."])?;
    // `bytes` fields become `bytes::Bytes`, so payloads are shared, not copied.
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
