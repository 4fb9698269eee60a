//! Compiles proto/ with protox (a pure-Rust protobuf compiler), so building needs no `protoc`.

fn main() {
    // Read at run time: a build script compiled in one clone may be reused by another through a
    // shared target dir, and `env!` would point it at the first clone's files.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = std::path::Path::new(&manifest).join("../../proto");
    let files = [root.join("shardline/worker/v1/worker.proto"), root.join("shardline/v1/generate.proto")];
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root]).expect("proto/ compiles");
    tonic_prost_build::configure().compile_fds(fds).expect("prost/tonic code generation");
}
