//! Model weight loading for Shardline: memory-mapped HF safetensors directories, GGUF files and
//! deterministic dummy weights behind one `WeightSource` trait, with per-rank slicing so each
//! tensor-parallel rank touches only its share, plus model alias resolution and fetching.

mod dummy;
mod error;
mod gguf;
mod progress;
mod resolve;
mod safetensors_dir;
mod source;

use std::path::Path;

pub use dummy::DummySource;
pub use error::{Result, WeightsError};
pub use gguf::GgufSource;
pub use progress::LoadProgress;
pub use resolve::{cache_dir, resolve_model, SMOLLM2_ALIAS};
pub use safetensors_dir::SafetensorsDir;
pub use source::{BlockBytes, RawBlocks, Slice, WeightSource};

/// Opens `path`: a directory with `config.json` and `model.safetensors` (or a sharded set with
/// `model.safetensors.index.json`), or a `*.gguf` file. Everything is memory-mapped.
pub fn open(path: &Path) -> Result<Box<dyn WeightSource>> {
    if path.is_dir() {
        return Ok(Box::new(SafetensorsDir::open(path)?));
    }
    if !path.exists() {
        return Err(WeightsError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        });
    }
    let is_gguf_ext = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    if is_gguf_ext || has_gguf_magic(path) {
        return Ok(Box::new(GgufSource::open(path)?));
    }
    Err(WeightsError::UnknownFormat { path: path.to_path_buf() })
}

/// Whether the file starts with the GGUF magic, for GGUF files saved without the extension.
fn has_gguf_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}
