//! Mimi's CPU engine allocates nothing per frame once its buffers have their size: the
//! whole process's allocations are counted over streaming encode and decode steps.
//!
//! The model is mid-sized (random weights) so that the large products use the worker threads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::Device;
use moshid_models::mimi::{write_random_checkpoint, Mimi, MimiConfig, WeightDtype};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn mid_config() -> MimiConfig {
    let mut c = MimiConfig::v0_1();
    c.seanet.n_filters = 16;
    c.seanet.dimension = 256;
    c.transformer.d_model = 256;
    c.transformer.num_heads = 4;
    c.transformer.num_layers = 2;
    c.transformer.dim_feedforward = 1024;
    c.quantizer.dimension = 64;
    c.quantizer.bins = 256;
    c.quantizer.n_q = 8;
    c
}

#[test]
fn streaming_steps_do_not_allocate() {
    let cfg = mid_config();
    let dir = std::env::temp_dir().join(format!("moshid-mimi-alloc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mimi.safetensors");
    write_random_checkpoint(&cfg, 3, &path).unwrap();
    for dtype in [WeightDtype::F32, WeightDtype::F16] {
        let mut m = Mimi::load_with(&path, &cfg, 8, &Device::Cpu, dtype).unwrap();
        let pcm: Vec<f32> = (0..1920).map(|i| (i as f32 * 0.05).sin() * 0.3).collect();
        let mut codes = vec![0u32; 8];
        let mut out = vec![0f32; 1920];
        let mut step = |m: &mut Mimi| {
            m.encode_step(&pcm, &mut codes).unwrap();
            m.decode_step(&codes, &mut out).unwrap();
        };
        for _ in 0..3 {
            step(&mut m);
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..20 {
            step(&mut m);
        }
        let n = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(n, 0, "{dtype:?}: {n} allocations in 20 steady-state frames");

        // Batched steps of two streams (inputs on the stack) allocate nothing either.
        let (mut a, mut b) = (m.new_stream(), m.new_stream());
        let (mut ca, mut cb) = (vec![0u32; 8], vec![0u32; 8]);
        let (mut oa, mut ob) = (vec![0f32; 1920], vec![0f32; 1920]);
        let mut batch_step = |a: &mut Mimi, b: &mut Mimi| {
            Mimi::encode_step_batch(&mut [a, b], &[&pcm, &pcm], &mut [&mut ca, &mut cb]).unwrap();
            Mimi::decode_step_batch(&mut [a, b], &[&ca, &cb], &mut [&mut oa, &mut ob]).unwrap();
        };
        for _ in 0..3 {
            batch_step(&mut a, &mut b);
        }
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..20 {
            batch_step(&mut a, &mut b);
        }
        let n = ALLOCS.load(Ordering::Relaxed) - before;
        assert_eq!(
            n, 0,
            "{dtype:?}: {n} allocations in 20 batched steps of two streams"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}
