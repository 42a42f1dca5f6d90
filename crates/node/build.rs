//! Compiles the vendored CSI proto with protox (pure Rust: no system protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../../proto/csi.proto");
    let fds = protox::compile(["csi.proto"], ["../../proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
