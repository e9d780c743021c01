//! A small seed mutator for the non-guided `mutate` tests (models/tests/fuzz_corpus.rs,
//! hal/tests/fuzz_corpus.rs), used where cargo-fuzz is not at hand.

/// xorshift64* and a few mutations in the style of libFuzzer's.
pub struct Mutator(pub u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    pub fn mutate(&mut self, seed: &[u8], all: &[Vec<u8>]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            if d.is_empty() {
                d.push(0);
            }
            let at = self.below(d.len());
            match self.below(6) {
                0 => d[at] ^= 1 << self.below(8),
                1 => d[at] = self.next() as u8,
                2 => d.truncate(at),
                3 => {
                    let v: [u64; 6] = [0, 1, 0xff, 0xffff_ffff, u64::MAX, 1 << 40];
                    let b = v[self.below(v.len())].to_le_bytes();
                    let w = [1, 2, 4, 8][self.below(4)].min(d.len() - at);
                    d[at..at + w].copy_from_slice(&b[..w]);
                }
                4 => {
                    let o = &all[self.below(all.len())];
                    let from = self.below(o.len());
                    let len = self.below(64).min(o.len() - from);
                    d.splice(at..at, o[from..from + len].iter().copied());
                }
                _ => {
                    let len = self.below(16).min(d.len() - at);
                    d.drain(at..at + len);
                }
            }
        }
        d
    }
}
