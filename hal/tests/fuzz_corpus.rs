//! Replays the committed WAV fuzz seeds (fuzz/seeds/wav/) through the fuzz target's body.

use std::path::Path;

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
