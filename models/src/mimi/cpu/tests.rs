//! The CPU kernels against plain loops, and each vector path against the generic one.

use super::gemm::{gemm, gemm_jobs, Epi, Jobs};
use super::isa::Isa;
use super::micro::{block, Acc, Geom, PanelPtr, MR};
use super::packed::{PackedMat, Panels, WeightDtype, NB};
use super::vmath::{elu, elu_generic};

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// `out[r, j] = sum_q a[r * lda + t * ts + i] * w[q, j]` in f64.
fn naive(a: &[f32], m: usize, g: Geom, w: &PackedMat) -> Vec<f64> {
    let mut out = vec![0f64; m * w.n];
    for r in 0..m {
        for j in 0..w.n {
            let mut s = 0f64;
            for t in 0..g.taps {
                for i in 0..g.len {
                    let x = a[r * g.lda + t * g.tap_stride + i] as f64;
                    s += x * w.at(t * g.len + i, j) as f64;
                }
            }
            out[r * w.n + j] = s;
        }
    }
    out
}

const SHAPES: [(usize, usize, usize, usize, usize); 7] = [
    // (m, taps, len, extra stride, n)
    (1, 1, 7, 0, 1),
    (2, 1, 64, 0, 16),
    (3, 1, 33, 5, 17),
    (7, 3, 12, 0, 50),
    (16, 1, 256, 0, 512),
    (40, 2, 48, 16, 35),
    (1920, 1, 24, 0, 64),
];

#[test]
fn gemm_matches_naive_for_every_isa_and_dtype() {
    for isa in Isa::available() {
        for dtype in [WeightDtype::F32, WeightDtype::F16] {
            for &(m, taps, len, extra, n) in &SHAPES {
                let g = Geom {
                    lda: len + extra,
                    taps,
                    len,
                    tap_stride: len * 2,
                };
                let a = fill((m - 1) * g.lda + (taps - 1) * g.tap_stride + len, 1);
                let w = PackedMat::new(&fill(g.depth() * n, 2), g.depth(), n, dtype);
                let want = naive(&a, m, g, &w);
                let mut got = vec![0f32; m * n];
                gemm(isa, &a, m, g, &w, &mut got, n, Epi::Store);
                for (i, (&x, &y)) in got.iter().zip(&want).enumerate() {
                    let tol = 1e-5 * (g.depth() as f64).sqrt() * (1.0 + y.abs());
                    assert!(
                        (x as f64 - y).abs() <= tol,
                        "{isa:?} {dtype:?} ({m},{taps},{len},{n}) [{i}]: {x} vs {y}"
                    );
                }
            }
        }
    }
}

#[test]
fn epilogues_add_bias_and_scale() {
    let (m, k, n) = (5, 40, 20);
    let a = fill(m * k, 3);
    let w = PackedMat::new(&fill(k * n, 4), k, n, WeightDtype::F32);
    let b = fill(n, 5);
    let isa = Isa::detect();
    let g = super::gemm::dense(k, k);
    let mut plain = vec![0f32; m * n];
    gemm(isa, &a, m, g, &w, &mut plain, n, Epi::Store);
    let base = fill(m * n, 6);
    let mut add_bias = base.clone();
    gemm(isa, &a, m, g, &w, &mut add_bias, n, Epi::AddBias(&b));
    let mut scaled = base.clone();
    gemm(isa, &a, m, g, &w, &mut scaled, n, Epi::AddScaled(&b));
    for i in 0..m * n {
        assert_eq!(add_bias[i], base[i] + (plain[i] + b[i % n]));
        assert_eq!(scaled[i], base[i] + plain[i] * b[i % n]);
    }
}

#[test]
fn many_rows_split_over_threads_give_the_same_bits_as_few() {
    // One product over 1000 rows (threaded) against the same rows 2 at a time.
    let (m, k, n) = (1000, 96, 48);
    let a = fill(m * k, 7);
    let w = PackedMat::new(&fill(k * n, 8), k, n, WeightDtype::F32);
    let isa = Isa::detect();
    let g = super::gemm::dense(k, k);
    let mut all = vec![0f32; m * n];
    gemm(isa, &a, m, g, &w, &mut all, n, Epi::Store);
    for r in (0..m).step_by(2) {
        let mut two = vec![0f32; 2 * n];
        gemm(isa, &a[r * k..], 2, g, &w, &mut two, n, Epi::Store);
        assert_eq!(&two[..], &all[r * n..(r + 2) * n]);
    }
}

#[test]
fn streams_in_one_product_give_each_ones_bits_alone() {
    // Streams of 1, 2, 7, 3 and 1000 rows (blocks straddle streams; the last makes the
    // product large enough for the worker threads), through a dilated geometry, with an
    // accumulating epilogue: each stream's rows equal its product alone, bit for bit.
    let g = Geom {
        lda: 24,
        taps: 3,
        len: 24,
        tap_stride: 48,
    };
    let n = 40;
    let w = PackedMat::new(&fill(g.depth() * n, 11), g.depth(), n, WeightDtype::F16);
    let scale = fill(n, 12);
    for isa in Isa::available() {
        let ms = [1usize, 2, 7, 3, 1000];
        let inputs: Vec<Vec<f32>> = ms
            .iter()
            .enumerate()
            .map(|(i, &m)| fill((m - 1) * g.lda + 2 * g.tap_stride + g.len, 20 + i as u64))
            .collect();
        let base: Vec<Vec<f32>> = ms.iter().map(|&m| fill(m * n, 30 + m as u64)).collect();
        let mut together = base.clone();
        let mut jobs = Jobs::new();
        for ((a, &m), out) in inputs.iter().zip(&ms).zip(together.iter_mut()) {
            jobs.push(a, m, out);
        }
        gemm_jobs(isa, &jobs, g, &w, n, Epi::AddScaled(&scale));
        for (i, ((a, &m), want)) in inputs.iter().zip(&ms).zip(&base).enumerate() {
            let mut alone = want.clone();
            gemm(isa, a, m, g, &w, &mut alone, n, Epi::AddScaled(&scale));
            assert!(
                alone
                    .iter()
                    .zip(&together[i])
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{isa:?}: stream {i} ({m} rows) differs in the batch"
            );
            assert!(alone != base[i], "{isa:?}: stream {i} unchanged");
        }
    }
}

/// The vector micro-kernel against the generic one with fused multiply-adds: same bits.
#[test]
fn vector_kernel_is_bit_identical_to_generic_fused() {
    let isa = Isa::best();
    if isa == Isa::Generic {
        return;
    }
    for dtype in [WeightDtype::F32, WeightDtype::F16] {
        let g = Geom {
            lda: 70,
            taps: 3,
            len: 20,
            tap_stride: 25,
        };
        let a = fill(MR * g.lda + 2 * g.tap_stride + g.len, 9);
        let w = PackedMat::new(&fill(g.depth() * NB, 10), g.depth(), NB, dtype);
        let p = match &w.panels {
            Panels::F32(v) => PanelPtr::F32(v.as_ptr()),
            Panels::F16(v) => PanelPtr::F16(v.as_ptr()),
        };
        for rows in 1..=MR {
            let (mut x, mut y): (Acc, Acc) = ([[0.0; NB]; MR], [[0.0; NB]; MR]);
            // SAFETY: `a` and the panel hold what the geometry reads.
            unsafe {
                let r = super::micro::rows_of(a.as_ptr(), g.lda, rows);
                block(isa, rows, &r, g, p, &mut x);
                super::micro::block_generic_fused(rows, &r, g, p, &mut y);
            }
            assert_eq!(x[..rows], y[..rows], "{isa:?} {dtype:?} rows {rows}");
        }
    }
}

#[test]
fn elu_is_close_to_libm_and_vector_paths_match_generic() {
    let mut x: Vec<f32> = (0..20_000).map(|i| -100.0 + i as f32 * 0.0051).collect();
    x.extend([
        0.0,
        -0.0,
        -1e-30,
        -1e-7,
        87.5,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
    ]);
    let mut fused = vec![0f32; x.len()];
    elu_generic::<true>(&x, &mut fused);
    for (&v, &e) in x.iter().zip(&fused) {
        let want = if v < 0.0 {
            (v as f64).exp_m1()
        } else {
            v as f64
        };
        let err = (e as f64 - want).abs();
        assert!(
            err <= 1.2e-7 + 2.5e-7 * want.abs(),
            "elu({v}) = {e}, want {want}"
        );
    }
    for isa in Isa::available() {
        let mut got = vec![0f32; x.len()];
        elu(isa, &x, &mut got);
        if isa != Isa::Generic || super::isa::FUSED {
            assert_eq!(got, fused, "{isa:?}");
        }
    }
}

#[test]
fn f16_packing_rounds_to_nearest() {
    let w = [1.0f32, 0.1, -2.71, 65504.0, 1e-6, 0.0];
    let p = PackedMat::new(&w, 1, 6, WeightDtype::F16);
    for (j, &v) in w.iter().enumerate() {
        assert_eq!(p.at(0, j), half::f16::from_f32(v).to_f32());
    }
    assert_eq!(p.bytes(), NB * 2);
}

/// The whole codec on the committed fixture with each kernel family: where the generic path
/// fuses its multiply-adds (aarch64), the vector path must give the same codes and the same
/// audio bits; elsewhere the same codes and audio within float rounding.
#[test]
fn codec_gives_the_same_results_with_every_isa() {
    use crate::mimi::{load::Vars, MimiConfig};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mimi");
    let cfg = MimiConfig::from_json_file(&dir.join("mimi_config.json")).unwrap();
    let file = dir.join("mimi_small.safetensors");
    let frames = 12;
    let pcm: Vec<f32> = (0..frames * 1920)
        .map(|i| 0.3 * (i as f32 * 0.013).sin() * (1.0 + (i as f32 * 0.0007).sin()))
        .collect();
    let mut results = Vec::new();
    for isa in Isa::available() {
        let v = Vars::open(&file, &candle_core::Device::Cpu).unwrap();
        let mut m = super::CpuMimi::load(&v, &cfg, 8, WeightDtype::F32).unwrap();
        v.finish().unwrap();
        m.set_isa(isa);
        let mut codes = vec![0u32; frames * 8];
        let mut out = vec![0f32; frames * 1920];
        for f in 0..frames {
            m.encode(
                &pcm[f * 1920..(f + 1) * 1920],
                &mut codes[f * 8..(f + 1) * 8],
            );
            m.decode(
                &codes[f * 8..(f + 1) * 8],
                &mut out[f * 1920..(f + 1) * 1920],
            );
        }
        results.push((isa, codes, out));
    }
    let (_, c0, o0) = &results[0];
    for (isa, c, o) in &results[1..] {
        if super::isa::FUSED {
            assert_eq!(c, c0, "{isa:?} codes");
            assert!(o == o0, "{isa:?} audio bits differ from the generic path");
        } else {
            let same = c.iter().zip(c0).filter(|(a, b)| a == b).count();
            assert!(
                same * 100 >= c.len() * 99,
                "{isa:?}: {same} of {} codes agree",
                c.len()
            );
        }
    }
}

/// A fixed kernel workload for comparing kernel families by instruction count (a proxy for
/// speed where it cannot be timed, e.g. aarch64 under qemu with an instruction-counting
/// plugin): `MOSHID_MIMI_KERNELS=generic|auto`, `MOSHID_MIMI_PROXY=stream|stream16|conv|elu`,
/// `MOSHID_MIMI_PROXY_REPS=N`; count N and 0 repetitions and take the difference.
#[test]
#[ignore]
fn kernel_workload() {
    let isa = Isa::detect();
    let reps: usize = std::env::var("MOSHID_MIMI_PROXY_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let what = std::env::var("MOSHID_MIMI_PROXY").unwrap_or_else(|_| "stream".into());
    let (m, g, n, dtype) = match what.as_str() {
        // A transformer projection on the 2 steps of a frame.
        "stream" => (2, super::gemm::dense(512, 512), 1536, WeightDtype::F32),
        "stream16" => (2, super::gemm::dense(512, 512), 1536, WeightDtype::F16),
        // The first residual block's kernel-3 convolution (64 -> 32 channels, 1920 steps).
        "conv" => (
            1920,
            Geom {
                lda: 64,
                taps: 1,
                len: 192,
                tap_stride: 0,
            },
            32,
            WeightDtype::F32,
        ),
        _ => (0, super::gemm::dense(1, 1), 1, WeightDtype::F32),
    };
    let mut sink = 0f32;
    if m > 0 {
        let a = fill((m - 1) * g.lda + g.depth(), 11);
        let w = PackedMat::new(&fill(g.depth() * n, 12), g.depth(), n, dtype);
        let mut out = vec![0f32; m * n];
        for _ in 0..reps {
            gemm(isa, &a, m, g, &w, &mut out, n, Epi::Store);
            sink += out[0];
        }
    } else {
        let x = fill(1920 * 64, 13);
        let mut y = vec![0f32; x.len()];
        for _ in 0..reps {
            elu(isa, &x, &mut y);
            sink += y[0];
        }
    }
    println!("{what} x{reps} on {}: {sink}", isa.name());
}
