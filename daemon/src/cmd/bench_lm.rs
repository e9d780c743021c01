//! `moshid bench lm`: LM step time, temporal/depth split and peak memory, one JSON line.

use std::path::PathBuf;

use clap::Args as ClapArgs;
use moshid_models::lm::{LmBatch, LmError, LmGen, LmModel, Sampling, SlotId, StepTiming};
use serde::Serialize;

use super::infer::{lm_config, load_lm};
use super::procstat::{cpu_ms, load_average, peak_rss_bytes};
use crate::config::{DeviceSpec, Dtype};

/// Arguments of `moshid bench lm`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// LM checkpoint: safetensors or GGUF.
    #[arg(long)]
    pub lm: PathBuf,
    /// JSON of the reference's lm_kwargs (default: the 7B v0.1 configuration).
    #[arg(long)]
    pub lm_config: Option<PathBuf>,
    /// Timed steps (after 2 warm-up steps).
    #[arg(long, default_value_t = 20, value_parser = super::count)]
    pub steps: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
    /// Compute dtype: auto (by device), f32, bf16 or f16.
    #[arg(long, default_value_t = Dtype::Auto)]
    pub dtype: Dtype,
    /// Attention window in steps (default: the configuration's context).
    #[arg(long)]
    pub context: Option<usize>,
    /// Time steps with the attention window already full (as after `context` steps of
    /// conversation: every step then reads the whole KV cache). Without it, steps attend
    /// over the few positions the bench has run.
    #[arg(long)]
    pub full_context: bool,
    /// Also measure memory bandwidth (STREAM copy and a read-only pass over 1 GiB, all
    /// cores) and report the step-time floor: bytes a step must read (weights, plus the KV
    /// cache with --full-context) / read bandwidth; `floor_ms_stream_copy` divides by the
    /// STREAM copy figure instead, which counts writes too.
    #[arg(long)]
    pub bandwidth: bool,
    /// Conversations stepped together over one read of the weights (the daemon's batched
    /// step); `step_ms_median` is then the whole batch's step.
    #[arg(long, default_value_t = 1, value_parser = batch_size)]
    pub batch: usize,
    /// With --batch B: time B separate batch-1 conversations over the same weights, one
    /// after another (what a server without batching does), for comparison.
    #[arg(long)]
    pub independent: bool,
    /// With --batch B: one batch of B slots, and in every round a step of 1, 2, 4, ... and B
    /// of them taken in turn (the others masked, as idle conversations are), one line per
    /// count. A drift of the machine's memory bandwidth between runs (a VM's swings by 2x)
    /// then moves every count alike and leaves the ratios between them.
    #[arg(long, conflicts_with = "independent")]
    pub in_turn: bool,
}

/// The largest `--batch` the bench takes (a house's worth of conversations).
const MAX_BATCH: usize = 64;

fn batch_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(b) if (1..=MAX_BATCH).contains(&b) => Ok(b),
        _ => Err(format!(
            "`{s}`: use a number of conversations in 1..={MAX_BATCH}"
        )),
    }
}

/// The conversations a bench steps: one batch, or B batch-1 generators.
enum Stepper {
    Batch(LmBatch, Vec<SlotId>),
    Independent(Vec<LmGen>),
}

impl Stepper {
    fn new(model: LmModel, context: usize, b: usize, independent: bool) -> Result<Self, LmError> {
        let model = std::sync::Arc::new(model);
        if independent {
            let gens = (0..b)
                .map(|_| LmGen::new(model.clone(), Sampling::default(), context))
                .collect::<Result<_, _>>()?;
            return Ok(Stepper::Independent(gens));
        }
        let mut batch = LmBatch::new(model, b, context)?;
        let ids = (0..b)
            .map(|_| batch.join(Sampling::default()))
            .collect::<Result<_, _>>()?;
        Ok(Stepper::Batch(batch, ids))
    }

    fn fill_context(&mut self) -> Result<(), LmError> {
        match self {
            Stepper::Batch(b, _) => b.fill_context_for_bench(),
            Stepper::Independent(g) => g.iter_mut().try_for_each(|g| g.fill_context_for_bench()),
        }
    }

    /// One step of the first `active` conversations with the same codes; the step's timing
    /// (summed over the generators when independent).
    fn step(&mut self, codes: &[u32], active: usize) -> Result<StepTiming, LmError> {
        match self {
            Stepper::Batch(b, ids) => {
                let frames: Vec<(SlotId, &[u32])> =
                    ids[..active].iter().map(|&id| (id, codes)).collect();
                for r in b.step(&frames) {
                    r?;
                }
                b.last_timing(ids[0])
            }
            Stepper::Independent(gens) => {
                let mut sum = StepTiming::default();
                for g in gens[..active].iter_mut() {
                    g.step(codes)?;
                    sum.temporal += g.last_timing().temporal;
                    sum.depth += g.last_timing().depth;
                }
                Ok(sum)
            }
        }
    }

    fn cache_bytes(&self) -> u64 {
        match self {
            Stepper::Batch(b, _) => b.cache_bytes(),
            Stepper::Independent(g) => g.iter().map(LmGen::cache_bytes).sum(),
        }
    }
}

/// Best-of-7 memory bandwidth over 1 GiB, one thread per core on disjoint parts:
/// (STREAM copy GB/s, counting read + write as STREAM does; read-only GB/s). The read pass is
/// what an LM step does with its weights, so it is written like the weight kernel: 2 MiB
/// pages where the kernel gives them, wide loads, independent sums, software prefetch.
fn bandwidth() -> (f64, f64) {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let bytes = 1usize << 30;
    let per = bytes / 8 / threads; // u64 elements per thread
    let mut src = HugeBuf::new(per * threads);
    let mut dst = HugeBuf::new(per * threads);
    for (i, x) in src.as_mut().iter_mut().enumerate() {
        *x = i as u64;
    }
    dst.as_mut().fill(1);
    let (mut copy, mut read) = (0f64, 0f64);
    for _ in 0..7 {
        let t = std::time::Instant::now();
        std::thread::scope(|sc| {
            for (s, d) in src.as_ref().chunks(per).zip(dst.as_mut().chunks_mut(per)) {
                sc.spawn(move || d.copy_from_slice(s));
            }
        });
        copy = copy.max((2 * per * threads * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
        let t = std::time::Instant::now();
        let sums: Vec<u64> = std::thread::scope(|sc| {
            let hs: Vec<_> = src
                .as_ref()
                .chunks(per)
                .map(|s| sc.spawn(move || read_sum(s)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        std::hint::black_box(sums);
        read = read.max((per * threads * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    std::hint::black_box(dst.as_ref());
    (copy, read)
}

/// Sum of `s` in 256-byte steps with eight independent lanes, prefetching 2 KiB ahead.
fn read_sum(s: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    for (i, c) in s.chunks_exact(32).enumerate() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetch is a hint; it never faults, whatever the address.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            let p = s.as_ptr().wrapping_add(i * 32 + 256) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(p);
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64));
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128));
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(192));
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = i;
        for j in 0..4 {
            for (a, x) in acc.iter_mut().zip(&c[j * 8..j * 8 + 8]) {
                *a = a.wrapping_add(*x);
            }
        }
    }
    acc.iter().fold(0, |a, x| a.wrapping_add(*x))
}

/// A zeroed u64 buffer in transparent huge pages where the kernel allows (as the LM's
/// weights are), so that the measured rate is the one the weights can be read at.
struct HugeBuf {
    ptr: *mut u64,
    len: usize,
    layout: std::alloc::Layout,
}

impl HugeBuf {
    fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align((len * 8).max(8), 2 << 20)
            .expect("1 GiB with 2 MiB alignment is a valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) } as *mut u64;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: the range is our fresh allocation; advisory, failure is harmless.
        unsafe {
            libc::madvise(ptr as *mut libc::c_void, layout.size(), libc::MADV_HUGEPAGE);
            std::ptr::write_bytes(ptr, 0, len);
        }
        Self { ptr, len, layout }
    }

    fn as_ref(&self) -> &[u64] {
        // SAFETY: len initialised u64s, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn as_mut(&mut self) -> &mut [u64] {
        // SAFETY: as above, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr as *mut u8, self.layout) };
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// Refuses a batch whose key/value caches do not fit in the memory left beside the loaded
/// weights: the caches are written in full when they are made (no page faults inside the
/// steps), so a batch that does not fit would be killed for memory rather than swap.
fn check_batch_fits(
    a: &Args,
    cfg: &moshid_models::lm::LmConfig,
    dtype: candle_core::DType,
    device: &candle_core::Device,
    context: usize,
) -> anyhow::Result<()> {
    let kv = moshid_models::lm::estimate_memory(&a.lm, cfg, dtype, context)?.kv_cache_bytes;
    let need = kv.saturating_mul(a.batch as u64);
    let Some(free) = moshid_models::device::free_memory(device) else {
        return Ok(());
    };
    if need > free.bytes {
        anyhow::bail!(
            "--batch {}: {} key/value caches of {:.2} GB (context {context}) need {:.2} GB, and {:.2} GB is free beside the weights: use a smaller --context or --batch",
            a.batch,
            a.batch,
            kv as f64 / 1e9,
            need as f64 / 1e9,
            free.bytes as f64 / 1e9
        );
    }
    Ok(())
}

/// Runs `moshid bench lm`.
pub fn run(a: Args) -> anyhow::Result<()> {
    if a.steps == 0 {
        anyhow::bail!("--steps must be at least 1");
    }
    let device = a.device.open()?;
    let cfg = lm_config(a.lm_config.as_deref(), &a.lm)?;
    let context = a.context.unwrap_or(cfg.context);
    let t0 = std::time::Instant::now();
    let model = load_lm(&a.lm, &cfg, a.dtype, &device, context)?;
    let load_s = t0.elapsed().as_secs_f64();
    let weights = model.weight_bytes();
    let dtype = model.dtype();
    check_batch_fits(&a, &cfg, dtype, &device, context)?;
    let mut gen = Stepper::new(model, context, a.batch, a.independent)?;
    if a.full_context {
        gen.fill_context()?;
    }
    let counts = if a.in_turn {
        in_turn_counts(a.batch)
    } else {
        vec![a.batch]
    };
    let mut times = time_steps(&mut gen, cfg.card, &counts, a.steps)?;
    // Before the bandwidth buffers (2 GiB) exist.
    let peak_rss = peak_rss_bytes();
    let (copy_gbps, read_gbps) = if a.bandwidth { bandwidth() } else { (0.0, 0.0) };
    // What a step must read: every weight once, plus the whole KV cache when the window is
    // full (the bench's few steps otherwise touch a negligible part of it).
    let kv_read = if a.full_context { gen.cache_bytes() } else { 0 };
    let run = RunFacts {
        context,
        dtype: format!("{dtype:?}").to_lowercase(),
        load_s,
        weights,
        kv_cache_bytes: gen.cache_bytes(),
        peak_rss,
        bandwidth: (copy_gbps, read_gbps, weights + kv_read),
    };
    for (&count, t) in counts.iter().zip(times.iter_mut()) {
        println!("{}", serde_json::to_string(&report(&a, &run, count, t))?);
    }
    Ok(())
}

/// What every line of one run shares.
struct RunFacts {
    context: usize,
    dtype: String,
    load_s: f64,
    weights: u64,
    kv_cache_bytes: u64,
    peak_rss: Option<u64>,
    /// STREAM copy and read GB/s (with `--bandwidth`), bytes a step must read.
    bandwidth: (f64, f64, u64),
}

/// The line for `count` conversations.
fn report(a: &Args, run: &RunFacts, count: usize, t: &mut Times) -> LmReport {
    let step = median(&mut t.total);
    let (copy_gbps, read_gbps, bytes) = run.bandwidth;
    LmReport {
        bench: "lm",
        lm: a.lm.display().to_string(),
        device: a.device.to_string(),
        dtype: run.dtype.clone(),
        steps: a.steps,
        batch: count,
        independent: a.independent,
        in_turn: a.in_turn,
        context: run.context,
        full_context: a.full_context,
        step_ms_median: step,
        step_ms_max: t.total.iter().cloned().fold(0.0, f64::max),
        step_ms_per_conversation: step / count as f64,
        temporal_ms_median: median(&mut t.temporal),
        depth_ms_median: median(&mut t.depth),
        rtf: step / 80.0,
        cpu_ms_per_step: t.cpu.iter().sum::<f64>() / t.cpu.len().max(1) as f64,
        load_average_1m: load_average(),
        load_s: run.load_s,
        weights_bytes: run.weights,
        kv_cache_bytes: run.kv_cache_bytes,
        peak_rss_bytes: run.peak_rss,
        threads: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        bandwidth: a
            .bandwidth
            .then(|| Bandwidth::new(copy_gbps, read_gbps, bytes, step)),
    }
}

/// 1, 2, 4, ... below `batch`, then `batch`.
fn in_turn_counts(batch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |c| Some(c * 2))
        .take_while(|&c| c < batch)
        .collect();
    v.push(batch);
    v
}

/// Milliseconds of the timed steps of one count of conversations.
#[derive(Default)]
struct Times {
    total: Vec<f64>,
    temporal: Vec<f64>,
    depth: Vec<f64>,
    /// Process CPU time (all threads) per step.
    cpu: Vec<f64>,
}

/// Two warm-up rounds, then `steps` rounds; a round steps each of `counts` conversations
/// once, in turn, with the same deterministic pseudo-speech codes (what the user streams does
/// not change the cost).
fn time_steps(
    gen: &mut Stepper,
    card: usize,
    counts: &[usize],
    steps: usize,
) -> Result<Vec<Times>, LmError> {
    let mut x = 12345u32;
    let mut codes = [0u32; 8];
    let mut times: Vec<Times> = counts.iter().map(|_| Times::default()).collect();
    for i in 0..steps + 2 {
        for c in codes.iter_mut() {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            *c = (x >> 8) % card as u32;
        }
        for (&count, t) in counts.iter().zip(times.iter_mut()) {
            let (cpu0, s) = (cpu_ms(), std::time::Instant::now());
            let timing = gen.step(&codes, count)?;
            let el = s.elapsed().as_secs_f64() * 1000.0;
            if i >= 2 {
                t.total.push(el);
                t.temporal.push(timing.temporal.as_secs_f64() * 1000.0);
                t.depth.push(timing.depth.as_secs_f64() * 1000.0);
                t.cpu.push(cpu_ms() - cpu0);
            }
        }
    }
    Ok(times)
}

/// The line `bench lm` prints.
#[derive(Serialize)]
struct LmReport {
    /// `lm`: which bench printed the line.
    bench: &'static str,
    /// The checkpoint's path.
    lm: String,
    /// `cpu`, `cuda` or `cuda:N`.
    device: String,
    /// The compute dtype the model was loaded in, lower case.
    dtype: String,
    /// Timed steps (warm-up excluded).
    steps: usize,
    /// Conversations per step.
    batch: usize,
    /// Whether they ran as separate batch-1 generators (`--independent`).
    independent: bool,
    /// Whether this count was timed in turn with others over one batch (`--in-turn`).
    in_turn: bool,
    /// Attention window in steps.
    context: usize,
    /// Whether the KV cache was filled to the window before timing (the worst case).
    full_context: bool,
    /// Median wall time of a whole step.
    step_ms_median: f64,
    /// Slowest step.
    step_ms_max: f64,
    /// The median step over the conversations it served.
    step_ms_per_conversation: f64,
    /// Median of the temporal transformer's part of a step.
    temporal_ms_median: f64,
    /// Median of the depth transformer's part (the codebooks).
    depth_ms_median: f64,
    /// Median step over the 80 ms frame: under 1 keeps up with real time.
    rtf: f64,
    /// CPU time of the process (all threads) per timed step.
    cpu_ms_per_step: f64,
    /// The host's 1-minute load average at the end (None off Linux).
    load_average_1m: Option<f64>,
    /// Seconds to load the checkpoint.
    load_s: f64,
    /// Bytes of weights the model holds.
    weights_bytes: u64,
    /// Bytes of the KV caches for the window (all conversations).
    kv_cache_bytes: u64,
    /// Peak resident memory before the bandwidth buffers exist (None off Linux).
    peak_rss_bytes: Option<u64>,
    /// The threads the host offers.
    threads: usize,
    /// Only with `--bandwidth`: its fields then sit beside the others.
    #[serde(flatten)]
    bandwidth: Option<Bandwidth>,
}

/// The memory-bandwidth floor of a step, measured by `--bandwidth`.
#[derive(Serialize)]
struct Bandwidth {
    /// STREAM-copy bandwidth in GB/s.
    stream_copy_gbps: f64,
    /// Read-only bandwidth in GB/s.
    read_gbps: f64,
    /// Weights plus, with a full window, the whole KV cache.
    bytes_read_per_step: u64,
    /// The fastest a step could be at `read_gbps`.
    floor_ms: f64,
    /// The median step over `floor_ms`: how close to memory-bound the step is.
    step_over_floor: f64,
    /// The floor at `stream_copy_gbps` instead.
    floor_ms_stream_copy: f64,
}

impl Bandwidth {
    /// The floor for reading `bytes_read_per_step` against a median step of `step_ms`.
    fn new(copy_gbps: f64, read_gbps: f64, bytes_read_per_step: u64, step_ms: f64) -> Self {
        let must_read = bytes_read_per_step as f64;
        let floor_ms = must_read / (read_gbps * 1e9) * 1000.0;
        Bandwidth {
            stream_copy_gbps: copy_gbps,
            read_gbps,
            bytes_read_per_step,
            floor_ms,
            step_over_floor: step_ms / floor_ms,
            floor_ms_stream_copy: must_read / (copy_gbps * 1e9) * 1000.0,
        }
    }
}
