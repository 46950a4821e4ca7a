//! Generates the ONNX protobuf types (`$OUT_DIR/onnx.rs`) from the vendored schema
//! `proto/onnx.proto` with prost; protox compiles the schema, so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    let descriptors = protox::compile(["onnx.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
