//! Read rates of the LM's CPU kernels, 1 and all threads: the q8_0 gemv (linear layers at
//! m = 1) for matrices of the 7B model's shapes and one of 1 GB, and the attention step over
//! a full 3000-step window of one 7B layer (32 heads of 128). Prints GB/s of weights or KV
//! cache read per second: compare with the machine's read bandwidth (`moshid bench lm
//! --bandwidth`). First, the batched products (M = 1, 4, 8 rows, taken in turn) of moshid's kernel and
//! candle's `QMatMul` side by side. Run: `cargo bench -p moshid-models --bench lm_kernels`.

use candle_core::{Device, Tensor};

/// Median and best GB/s of `f` over 30 runs (after 3 warm-ups) in a pool of `threads`.
fn rate(threads: usize, bytes: usize, f: impl FnMut() + Send) -> (f64, f64) {
    let times = times_ms(threads, f);
    let gbps = |ms: f64| bytes as f64 / (ms / 1e3) / 1e9;
    (gbps(times[times.len() / 2]), gbps(times[0]))
}

/// Milliseconds of 30 runs of `f` (after 3 warm-ups) in a pool of `threads`, sorted.
fn times_ms(threads: usize, mut f: impl FnMut() + Send) -> Vec<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let mut times = pool.install(|| {
        for _ in 0..3 {
            f();
        }
        (0..30)
            .map(|_| {
                let t = std::time::Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect::<Vec<_>>()
    });
    times.sort_by(f64::total_cmp);
    times
}

fn main() {
    batched();
    gemv();
    attention();
}

fn attention() {
    let threads_all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (heads, cap, d) = (32, 3000, 128);
    let q: Vec<f32> = (0..heads * d).map(|i| (i % 7) as f32 * 0.01).collect();
    let k: Vec<f32> = (0..heads * cap * d)
        .map(|i| (i % 13) as f32 * 0.01)
        .collect();
    let v: Vec<f32> = (0..heads * cap * d)
        .map(|i| (i % 11) as f32 * 0.01)
        .collect();
    let mut out = vec![0f32; heads * d];
    let bytes = 2 * heads * cap * d * 4;
    let mut line = format!(
        "attention, 1 layer, window {cap} ({:.0} MB):",
        bytes as f64 / 1e6
    );
    for threads in [1, threads_all] {
        let (med, best) = rate(threads, bytes, || {
            moshid_models::lm::bench_attend(&q, &k, &v, cap, d, &mut out);
            std::hint::black_box(&out);
        });
        line += &format!("  {threads} thread(s): median {med:.1} GB/s, best {best:.1} GB/s");
    }
    println!("{line}");
}

/// One implementation of a quantized product, as the bench calls it.
type Product = Box<dyn Fn(&Tensor) -> Tensor + Send + Sync>;

/// q8_0 / q4_0 products at M = 1, 4, 8 rows of activations, all threads: moshid's kernel on
/// each path this CPU has and candle's `QMatMul`, side by side, with the ratio to M = 1.
fn batched() {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::Module;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "batched products, {threads} threads, moshid kernel on this CPU: {:?}",
        moshid_models::lm::cpu_kernel()
    );
    let k = 4096;
    for (dt, n) in [
        (GgmlDType::Q8_0, 22528usize),
        (GgmlDType::Q4_0, 22528),
        (GgmlDType::Q8_0, 245760),
    ] {
        let w = Tensor::randn(0f32, 1., (n, k), &Device::Cpu).expect("weights");
        let q = QTensor::quantize(&w, dt).expect("quantize");
        drop(w);
        let blocks = q.data().expect("blocks").to_vec();
        let mm = QMatMul::from_qtensor(q).expect("qmatmul");
        let mb = blocks.len() as f64 / 1e6;
        let mut impls: Vec<(String, Product)> = vec![];
        for isa in ["avx512-vnni", "avx2"] {
            if let Some(g) = moshid_models::lm::bench_q_gemm(dt, n, k, &blocks, isa) {
                impls.push((
                    format!("moshid {isa}"),
                    Box::new(move |x| g(x).expect("gemm")),
                ));
            }
        }
        impls.push((
            "candle QMatMul".into(),
            Box::new(move |x| mm.forward(x).expect("mm")),
        ));
        let xs: Vec<Tensor> = [1usize, 4, 8]
            .iter()
            .map(|&m| Tensor::randn(0f32, 1., (1, m, k), &Device::Cpu).expect("input"))
            .collect();
        for (name, f) in &impls {
            let ms = interleaved_millis(threads, &xs, f);
            let mut line = format!("{dt:?} [{n} x {k}] ({mb:.0} MB) {name}:");
            for (x, t) in xs.iter().zip(&ms) {
                let m = x.dim(1).expect("rows");
                line += &format!("  M={m} {t:.2} ms ({:.2}x)", t / ms[0]);
            }
            println!("{line}");
        }
    }
}

/// Median milliseconds of `f` on each of `xs`, the inputs taken in turn in every one of 30
/// rounds (after 3 warm-up rounds), so that a drift of the machine's memory bandwidth (a VM's
/// swings by 2x over minutes) moves all of them alike and leaves their ratios.
fn interleaved_millis(threads: usize, xs: &[Tensor], f: &Product) -> Vec<f64> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    let mut times = vec![Vec::new(); xs.len()];
    pool.install(|| {
        for round in 0..33 {
            for (x, t) in xs.iter().zip(times.iter_mut()) {
                let t0 = std::time::Instant::now();
                std::hint::black_box(f(x));
                if round >= 3 {
                    t.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
    });
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

fn gemv() {
    let k = 4096;
    let threads_all = std::thread::available_parallelism().map_or(1, |n| n.get());
    // in_proj, ff_in, and a 1 GB matrix (nothing of it stays in cache).
    for n in [12288usize, 22528, 245760] {
        let blocks: Vec<u8> = (0..n * k / 32 * 34)
            .map(|i| (i * 7 % 251) as u8 & 0x3f)
            .collect();
        let Some(gemv) = moshid_models::lm::bench_q8_gemv(n, k, &blocks) else {
            println!("qgemv: this CPU lacks AVX2/FMA/F16C; the candle fallback is used instead");
            return;
        };
        let x = Tensor::randn(0f32, 1., (1, 1, k), &Device::Cpu).expect("input");
        let mut line = format!("q8_0 [{n} x {k}] ({:.0} MB):", blocks.len() as f64 / 1e6);
        for threads in [1, threads_all] {
            let (med, best) = rate(threads, blocks.len(), || {
                std::hint::black_box(gemv(&x).expect("gemv"));
            });
            line += &format!("  {threads} thread(s): median {med:.1} GB/s, best {best:.1} GB/s");
        }
        println!("{line}");
    }
}
