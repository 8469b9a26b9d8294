//! Generates the tonic/prost code with the vendored `protoc`, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/fedseg.proto");
    // Model chunks as `Bytes`: a received chunk is then a slice of the receive buffer, not a
    // copy of it (hundreds of MB per round).
    tonic_prost_build::configure()
        .bytes(".fedseg.v1.Chunk.data")
        .bytes(".fedseg.v1.UploadPart.chunk")
        .compile_protos(&["proto/fedseg.proto"], &["proto"])?;
    Ok(())
}
