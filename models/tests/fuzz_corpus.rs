//! Replays the committed fuzz seeds (fuzz/seeds/<target>/, including every crash a fuzzer
//! found, once fixed) through the fuzz targets' bodies: cheap, no cargo-fuzz needed, and a
//! crash found once stays fixed.

use std::path::{Path, PathBuf};

#[path = "../../fuzz/mutator.rs"]
mod mutator;
use mutator::Mutator;

/// A fuzz target: its name (the seed folder) and its body.
type Target = (&'static str, fn(&[u8]));

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

/// A cheap, non-guided fuzzer for when cargo-fuzz is not at hand: mutates the seeds (bit
/// flips, byte sets, truncation, splices, interesting integers) and runs every target
/// `MOSHID_FUZZ_EXECS` times (default 10000). `cargo test --release -p moshid-models --test
/// fuzz_corpus -- --ignored mutate --nocapture`. A panic names the target; the input is
/// written to fuzz/artifacts/.
#[test]
#[ignore]
fn mutate() {
    let n: u64 = std::env::var("MOSHID_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let targets: [Target; 5] = [
        ("gguf_header", moshid_models::fuzz::gguf_header),
        ("lm_config", moshid_models::fuzz::lm_config),
        ("mimi_config", moshid_models::fuzz::mimi_config),
        ("sentencepiece", moshid_models::fuzz::sentencepiece),
        ("checkpoint", moshid_models::fuzz::checkpoint),
    ];
    let only = std::env::var("MOSHID_FUZZ_TARGET").ok();
    for (name, f) in targets {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let inputs: Vec<Vec<u8>> = seeds(name)
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        let t0 = std::time::Instant::now();
        let mut m = Mutator(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for i in 0..n {
            let data = m.mutate(&inputs[i as usize % inputs.len()], &inputs);
            let ok = std::panic::catch_unwind(|| f(&data));
            if ok.is_err() {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/artifacts");
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("{name}-crash-{i}")), &data).unwrap();
                panic!("{name}: input {i} panicked (saved in fuzz/artifacts)");
            }
        }
        eprintln!(
            "mutate: {name}: {n} executions in {:.1} s, no crash",
            t0.elapsed().as_secs_f64()
        );
    }
}
