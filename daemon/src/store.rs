//! Model files on disk: Hugging Face downloads into the cache (Python's layout), offline
//! use of that cache, local files, and integrity checks.
//!
//! A file is only handed out after its content matched the hash the hub named it by
//! (sha256 for LFS files, git's blob sha1 otherwise). Downloads (`download.rs`) go to
//! `*.part` and are renamed when complete; we verify after that and delete what does not
//! match, so a partial or corrupt file is never used. Verified blobs get a stamp so
//! restarts skip re-hashing.

mod download;

pub use download::{Hub, Policy};

use crate::config::{Config, LocalFiles, ModelSource, VoicePreset};
use crate::model_spec::ModelSpec;
use hf_hub::{Cache, Repo, RepoType};
use moshid_models::lm::LmConfig;
use moshid_models::mimi::MimiConfig;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Errors while locating, downloading or verifying model files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Offline and the file is not in the cache.
    #[error("{file} from {repo} is not in the cache {cache} and model.offline = true: run `moshid fetch` with network access first")]
    NotCached {
        /// Repo id.
        repo: String,
        /// File name.
        file: String,
        /// Cache folder.
        cache: PathBuf,
    },
    /// The server could not be reached, stalled or broke off, attempt after attempt.
    #[error("cannot download {file} from {server}: {message}")]
    Download {
        /// File name.
        file: String,
        /// The server (host and port).
        server: String,
        /// What went wrong, and how often it was tried.
        message: String,
    },
    /// The hub refused (no such file, no access) or did not answer like a hub.
    #[error("cannot download {file} of {repo} from {server}: HTTP {status}: {hint}")]
    Refused {
        /// Repo id.
        repo: String,
        /// File name.
        file: String,
        /// The server (host and port).
        server: String,
        /// HTTP status.
        status: u16,
        /// What it likely means.
        hint: String,
    },
    /// The configuration names no such voice preset.
    #[error("no voice preset named {0:?}")]
    NoVoice(String),
    /// A satellite (`source = "remote"`) has no model files: its brain has them.
    #[error("`model.source = \"remote\"` has no model files here: fetch them on the brain")]
    Remote,
    /// Content did not match its hash; the file was deleted.
    #[error("{path}: content does not match its hash {expected} (got {actual}); the corrupt file was deleted, run again to re-download")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Hash from the hub.
        expected: String,
        /// Hash of what is on disk.
        actual: String,
    },
    /// A local file is missing or unreadable.
    #[error("model file {path}: {error} (check [model.local] in the config)")]
    Local {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Other I/O trouble in the cache.
    #[error("model cache {path}: {error} (is the cache directory writable?)")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// Building the demo model failed.
    #[error(transparent)]
    Demo(#[from] crate::demo_model::DemoError),
    /// A configuration JSON next to the weights is unreadable or invalid.
    #[error("{path}: {message} (check [model.local] lm_config / mimi_config)")]
    Config {
        /// The JSON file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// What a download reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// Bytes of `file` on disk so far (a resumed `.part` starts above 0).
    Bytes {
        /// File name.
        file: &'a str,
        /// Bytes done.
        done: u64,
        /// Bytes in all.
        total: u64,
    },
    /// An attempt failed; the next one starts in `wait` (reported about once a second).
    Retrying {
        /// File name.
        file: &'a str,
        /// Why the last attempt failed.
        why: &'a str,
        /// The next attempt's number.
        next: u32,
        /// Attempts in all.
        of: u32,
        /// Time left before it.
        wait: std::time::Duration,
    },
}

impl std::fmt::Display for Progress<'_> {
    /// `file: 12 of 40 bytes`, `file: why; attempt 2 of 5 in 3 s`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Bytes { file, done, total } => write!(f, "{file}: {done} of {total} bytes"),
            Progress::Retrying {
                file,
                why,
                next,
                of,
                wait,
            } => write!(
                f,
                "{file}: {why}; attempt {next} of {of} in {} s",
                wait.as_secs_f32().ceil()
            ),
        }
    }
}

/// Download progress callback.
pub type ProgressFn<'a> = &'a mut dyn FnMut(Progress<'_>);

/// The hub cache folder inside the configured cache dir (Python's `hub/` layout).
pub fn hub_cache_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("hub")
}

/// Resolves (downloading if needed and allowed) the model of `voice` per the config.
pub fn resolve(
    cfg: &Config,
    voice: &str,
    progress: ProgressFn<'_>,
) -> Result<ModelSpec, StoreError> {
    match cfg.model.source {
        ModelSource::Local => {
            let l = cfg.model.local.as_ref().ok_or_else(|| StoreError::Local {
                path: PathBuf::from("[model.local]"),
                error: std::io::Error::new(std::io::ErrorKind::NotFound, "table missing"),
            })?;
            local(l)
        }
        ModelSource::Demo => Ok(crate::demo_model::ensure(&cfg.cache_dir, voice)?),
        ModelSource::Remote => Err(StoreError::Remote),
        ModelSource::Hub => {
            // Config validation guarantees the preset exists; be safe anyway.
            let preset = cfg
                .voices
                .get(voice)
                .ok_or_else(|| StoreError::NoVoice(voice.to_string()))?;
            let hub = hub_cache_dir(&cfg.cache_dir);
            let client = Hub::from_env(Policy::from_env());
            let mut get =
                |f: &str| fetch_file(&hub, &client, preset, f, cfg.model.offline, progress);
            let lm = get(&preset.lm_file)?;
            // Moshi, or PersonaPlex (a ninth depth step, or dep_q 16 in a GGUF's metadata).
            // A file whose header cannot be read here keeps the preset's Moshi shape: fetching
            // needs no parse, and loading it reports what is wrong with the file.
            let lm_config = LmConfig::for_checkpoint(None, &lm).unwrap_or_else(|e| {
                log::warn!(
                    "{}: cannot tell Moshi from PersonaPlex ({e}); assuming Moshi 7B (delete \
                     the file from the model cache if it is damaged)",
                    lm.display()
                );
                LmConfig::v0_1()
            });
            let label = if lm_config.is_personaplex() {
                "PersonaPlex"
            } else {
                "Moshi"
            };
            Ok(ModelSpec {
                label: label.into(),
                lm,
                lm_config,
                mimi: get(&preset.mimi_file)?,
                mimi_config: MimiConfig::v0_1(),
                tokenizer: get(&preset.tokenizer_file)?,
            })
        }
    }
}

/// `[model.local]`: every file must be readable now; the JSON configurations are read.
fn local(l: &LocalFiles) -> Result<ModelSpec, StoreError> {
    for p in [&l.lm, &l.mimi, &l.tokenizer]
        .into_iter()
        .chain(l.lm_config.as_ref())
        .chain(l.mimi_config.as_ref())
    {
        std::fs::File::open(p).map_err(|error| StoreError::Local {
            path: p.clone(),
            error,
        })?;
    }
    let bad = |path: &PathBuf, e: &dyn std::fmt::Display| StoreError::Config {
        path: path.clone(),
        message: e.to_string(),
    };
    // The JSON when given, else what a GGUF written by `moshid quantize` carries, else 7B.
    let lm_config = LmConfig::for_checkpoint(l.lm_config.as_deref(), &l.lm)
        .map_err(|e| bad(l.lm_config.as_ref().unwrap_or(&l.lm), &e))?;
    let mimi_config = match &l.mimi_config {
        Some(p) => MimiConfig::from_json_file(p).map_err(|e| bad(p, &e))?,
        None => MimiConfig::v0_1(),
    };
    Ok(ModelSpec {
        label: "Moshi".into(),
        lm: l.lm.clone(),
        lm_config,
        mimi: l.mimi.clone(),
        mimi_config,
        tokenizer: l.tokenizer.clone(),
    })
}

fn repo_of(p: &VoicePreset) -> Repo {
    Repo::with_revision(p.repo.clone(), RepoType::Model, p.revision.clone())
}

/// One file of a preset: from the cache if present and intact, else downloaded from
/// `client` (unless offline), then verified.
pub fn fetch_file(
    hub_cache: &Path,
    client: &Hub,
    preset: &VoicePreset,
    file: &str,
    offline: bool,
    progress: ProgressFn<'_>,
) -> Result<PathBuf, StoreError> {
    let cache = Cache::new(hub_cache.to_path_buf());
    if let Some(path) = cache.repo(repo_of(preset)).get(file) {
        match verify(hub_cache, &path) {
            Ok(()) => return Ok(path),
            Err(e) if offline => return Err(e),
            Err(e) => log::warn!("{e}; downloading {file} again"),
        }
    }
    if offline {
        return Err(StoreError::NotCached {
            repo: preset.repo.clone(),
            file: file.to_string(),
            cache: hub_cache.to_path_buf(),
        });
    }
    std::fs::create_dir_all(hub_cache).map_err(|error| StoreError::Io {
        path: hub_cache.to_path_buf(),
        error,
    })?;
    let path = client.fetch(&cache, &preset.repo, &preset.revision, file, progress)?;
    verify(hub_cache, &path)?;
    Ok(path)
}

/// Checks a cached file against the hash its blob is named by; deletes it on mismatch.
///
/// Snapshot entries are symlinks to `blobs/<hash>`; a regular file (copied cache) has no
/// hash to check and is accepted as is.
pub fn verify(hub_cache: &Path, path: &Path) -> Result<(), StoreError> {
    let io = |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    };
    let blob = std::fs::canonicalize(path).map_err(io)?;
    let expected = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let is_hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let kind = match expected.len() {
        64 if is_hex(&expected) => HashKind::Sha256,
        40 if is_hex(&expected) => HashKind::GitSha1,
        _ => {
            log::warn!(
                "{}: no hash to check it against (not a hub blob); using it as is",
                path.display()
            );
            return Ok(());
        }
    };
    let size = std::fs::metadata(&blob).map_err(io)?.len();
    let stamp = hub_cache.join(".moshid-verified").join(&expected);
    if std::fs::read_to_string(&stamp)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        == Some(size)
    {
        return Ok(());
    }
    let actual = hash_file(&blob, kind, size).map_err(io)?;
    if actual != expected {
        // Remove both the blob and the pointer so the next run downloads afresh.
        let _ = std::fs::remove_file(&blob);
        let _ = std::fs::remove_file(path);
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            expected,
            actual,
        });
    }
    if let Some(dir) = stamp.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::write(&stamp, size.to_string());
    Ok(())
}

#[derive(Clone, Copy)]
enum HashKind {
    Sha256,
    GitSha1,
}

fn hash_file(path: &Path, kind: HashKind, size: u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut sha256 = Sha256::new();
    let mut sha1 = Sha1::new();
    if let HashKind::GitSha1 = kind {
        sha1.update(format!("blob {size}\0").as_bytes());
    }
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match kind {
            HashKind::Sha256 => sha256.update(&buf[..n]),
            HashKind::GitSha1 => sha1.update(&buf[..n]),
        }
    }
    let digest: Vec<u8> = match kind {
        HashKind::Sha256 => sha256.finalize().to_vec(),
        HashKind::GitSha1 => sha1.finalize().to_vec(),
    };
    Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a Python-style cache entry: blobs/<hash>, snapshots/<rev>/<file> -> blob.
    fn put(hub: &Path, repo: &str, file: &str, content: &[u8], hash: &str) {
        let folder = hub.join(format!("models--{}", repo.replace('/', "--")));
        let rev = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(folder.join("blobs")).unwrap();
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::create_dir_all(folder.join("snapshots").join(rev)).unwrap();
        std::fs::write(folder.join("refs/main"), rev).unwrap();
        std::fs::write(folder.join("blobs").join(hash), content).unwrap();
        std::os::unix::fs::symlink(
            format!("../../blobs/{hash}"),
            folder.join("snapshots").join(rev).join(file),
        )
        .unwrap();
    }

    fn sha256_hex(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A client for a server that is never asked (offline tests).
    fn hub_client() -> Hub {
        Hub::new("http://127.0.0.1:9", None, Policy::default())
    }

    fn preset() -> VoicePreset {
        crate::config::builtin_voices()["moshiko"].clone()
    }

    /// [`put`] for the moshiko preset's LM file.
    fn put_gguf(hub: &Path, content: &[u8], hash: &str) {
        put(
            hub,
            "kyutai/moshiko-candle-q8",
            "model.q8.gguf",
            content,
            hash,
        );
    }

    /// The moshiko preset's LM file, offline, from `hub`.
    fn fetch_gguf_offline(hub: &Path) -> Result<PathBuf, StoreError> {
        fetch_file(
            hub,
            &hub_client(),
            &preset(),
            "model.q8.gguf",
            true,
            &mut |_| {},
        )
    }

    #[test]
    fn offline_cache_hit_is_verified_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let hub = dir.path().join("hub");
        let data = b"pretend these are weights";
        put_gguf(&hub, data, &sha256_hex(data));
        let mut calls = 0;
        let p = fetch_file(
            &hub,
            &hub_client(),
            &preset(),
            "model.q8.gguf",
            true,
            &mut |_| calls += 1,
        )
        .expect("cached file is found offline");
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert_eq!(calls, 0, "no download progress for a cache hit");
        // A stamp records the verification so restarts skip hashing.
        assert!(hub.join(".moshid-verified").join(sha256_hex(data)).exists());
    }

    #[test]
    fn corrupt_blob_is_rejected_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let hub = dir.path().join("hub");
        let good = b"the real content";
        put_gguf(&hub, b"the real cont", &sha256_hex(good));
        let e = fetch_gguf_offline(&hub).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        // Gone: the next offline attempt says "not cached" instead of using it.
        let e = fetch_gguf_offline(&hub).unwrap_err();
        assert!(matches!(e, StoreError::NotCached { .. }), "{e}");
    }

    #[test]
    fn missing_offline_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let e = fetch_gguf_offline(dir.path()).unwrap_err().to_string();
        assert!(e.contains("moshid fetch"), "{e}");
    }

    #[test]
    fn git_sha1_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let hub = dir.path().join("hub");
        let f = dir.path().join("x");
        std::fs::write(&f, b"hi").unwrap();
        // git itself names the blob; our hash must agree with it.
        let out = std::process::Command::new("git")
            .args(["hash-object", "--no-filters"])
            .arg(&f)
            .output()
            .expect("git is installed");
        let h = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(h.len(), 40);
        put(&hub, "a/b", "t.model", b"hi", &h);
        let p = VoicePreset {
            repo: "a/b".into(),
            ..preset()
        };
        fetch_file(&hub, &hub_client(), &p, "t.model", true, &mut |_| {})
            .expect("sha1 blob verifies");
    }
}
