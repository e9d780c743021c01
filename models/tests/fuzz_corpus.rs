//! Replays the committed fuzz seeds (fuzz/seeds/<target>/, including every crash a fuzzer
//! found, once fixed) through the fuzz targets' bodies: cheap, no cargo-fuzz needed, and a
//! crash found once stays fixed.

use std::path::{Path, PathBuf};

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no seeds in {}", dir.display());
    v
}

fn replay(target: &str, f: fn(&[u8])) {
    for p in seeds(target) {
        eprintln!("{target}: {}", p.display());
        f(&std::fs::read(&p).unwrap());
    }
}

#[test]
fn checkpoint_seeds() {
    replay("checkpoint", moshid_models::fuzz::checkpoint);
}

#[test]
fn gguf_header_seeds() {
    replay("gguf_header", moshid_models::fuzz::gguf_header);
}

#[test]
fn lm_config_seeds() {
    replay("lm_config", moshid_models::fuzz::lm_config);
}

#[test]
fn mimi_config_seeds() {
    replay("mimi_config", moshid_models::fuzz::mimi_config);
}

#[test]
fn sentencepiece_seeds() {
    replay("sentencepiece", moshid_models::fuzz::sentencepiece);
}

/// The valid seeds load: the targets reach the code past the checks.
#[test]
fn valid_seeds_are_accepted() {
    use candle_core::Device;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/checkpoint");
    let lm = moshid_models::fuzz::tiny_lm();
    for f in ["lm_candle.safetensors", "lm_pytorch.safetensors", "lm.gguf"] {
        moshid_models::lm::LmModel::load(&dir.join(f), &lm, None, &Device::Cpu).unwrap();
    }
    let mimi = moshid_models::fuzz::tiny_mimi();
    moshid_models::mimi::Mimi::load(&dir.join("mimi.safetensors"), &mimi, 2, &Device::Cpu).unwrap();
}

/// Regenerates the valid seeds: `cargo test --release -p moshid-models --test fuzz_corpus
/// -- --ignored write_seeds`.
#[test]
#[ignore]
fn write_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds");
    moshid_models::fuzz::write_seeds(&dir).unwrap();
}
