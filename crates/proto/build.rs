//! Compiles proto/ with protox (a pure-Rust protobuf compiler), so building needs no `protoc`.

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files = [root.join("shardline/worker/v1/worker.proto"), root.join("shardline/v1/generate.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root]).expect("proto/ compiles");
    tonic_prost_build::configure().compile_fds(fds).expect("prost/tonic code generation");
}
