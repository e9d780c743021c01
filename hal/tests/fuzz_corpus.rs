//! Replays the committed WAV fuzz seeds (fuzz/seeds/wav/) through the fuzz target's body.

use std::path::Path;

#[path = "../../fuzz/mutator.rs"]
mod mutator;

#[test]
fn wav_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wav");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        eprintln!("wav: {}", p.display());
        moshid_hal::fuzz::wav(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "no seeds in {}", dir.display());
}

/// Non-guided fuzzing of the WAV reader: `MOSHID_FUZZ_EXECS` mutated seeds (default 10000).
#[test]
#[ignore]
fn mutate() {
    let n: u64 = std::env::var("MOSHID_FUZZ_EXECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/wav");
    let inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    let mut m = mutator::Mutator(0x5eed);
    let t0 = std::time::Instant::now();
    for i in 0..n {
        let data = m.mutate(&inputs[i as usize % inputs.len()], &inputs);
        if std::panic::catch_unwind(|| moshid_hal::fuzz::wav(&data)).is_err() {
            std::fs::write(std::env::temp_dir().join(format!("wav-crash-{i}")), &data).unwrap();
            panic!("wav: input {i} panicked (saved in the temp dir)");
        }
    }
    eprintln!(
        "mutate: wav: {n} executions in {:.1} s, no crash",
        t0.elapsed().as_secs_f64()
    );
}
