//! Compiles kernels/emu (the CPU emulator of the CUDA subset the kernels use) together with the
//! real kernels/*.cu into a static library, with g++ and the flags the emulator is checked
//! with: C++20, -O2 in every profile (the tests run the kernels for real; a dev build at -O0
//! would be several times slower) and -ffp-contract=off (no fused multiply-add the source did
//! not ask for, so results are reproducible across machines).
//!
//! Needs x86-64 Linux (the fibers switch stacks in x86-64 assembly) and g++ >= 10 (C++20;
//! `$CXX` overrides, as the `cc` crate reads it). Anything else fails here with a message that
//! says so, before the compiler gets a chance to fail obscurely.

use std::path::{Path, PathBuf};
use std::process::Command;

const MIN_GCC: u32 = 10;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let (arch, os) = (env("CARGO_CFG_TARGET_ARCH"), env("CARGO_CFG_TARGET_OS"));
    if arch != "x86_64" || os != "linux" {
        fail(&format!(
            "the kernel emulator (kernels/emu) runs on x86-64 Linux only (its fibers switch stacks in \
             x86-64 assembly); this target is {arch}-{os}"
        ));
    }
    // Read at run time, not with env!: a build script cached in a shared target dir may serve
    // another clone.
    let manifest = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let kernels = manifest.join("../../kernels").canonicalize().expect("kernels/ next to crates/");
    let emu = kernels.join("emu");
    for dir in [&kernels, &emu, &emu.join("include")] {
        watch(dir);
    }

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .flag("-ffp-contract=off")
        // The kernels' `#pragma unroll` is nvcc's.
        .flag("-Wno-unknown-pragmas")
        .include(emu.join("include"))
        .file(emu.join("emu.cc"))
        .file(emu.join("kernels.cc"));
    check_compiler(&build);
    build.compile("shardline_kernels_emu");
}

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("cargo sets {var}"))
}

/// Reruns this script when any file of `dir` (not its subdirectories) changes, or one is added.
fn watch(dir: &Path) {
    println!("cargo:rerun-if-changed={}", dir.display());
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_file() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// The compiler `build` will run must be g++ >= [`MIN_GCC`].
fn check_compiler(build: &cc::Build) {
    let help = format!(
        "the kernel emulator (kernels/emu) needs g++ >= {MIN_GCC}: install it (Debian/Ubuntu: \
         `apt-get install g++`) or point CXX at one"
    );
    let compiler = build.try_get_compiler().unwrap_or_else(|e| fail(&format!("{help} (no C++ compiler: {e})")));
    let path = compiler.path().display().to_string();
    if !compiler.is_like_gnu() {
        fail(&format!("{help}; `{path}` is not g++ (clang and others are untested)"));
    }
    let output = Command::new(compiler.path())
        .arg("-dumpfullversion")
        .output()
        .unwrap_or_else(|e| fail(&format!("{help} (running `{path}`: {e})")));
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let major: Option<u32> = version.split('.').next().and_then(|m| m.parse().ok());
    if !output.status.success() || major.is_none_or(|m| m < MIN_GCC) {
        fail(&format!("{help}; `{path}` is version `{version}`"));
    }
}

fn fail(message: &str) -> ! {
    // A panic prints this under "failed to run custom build command", where cargo users look.
    panic!("{message}");
}
