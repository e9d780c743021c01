//! Several Mimi streams stepped together ([`Mimi::encode_step_batch`] /
//! [`Mimi::decode_step_batch`]) give what each stream gives alone: streams join the batch at
//! different steps, one leaves and re-joins with a fresh state, and each one's codes and
//! audio are compared with the same stream run by itself on its own loaded model.

mod streams;

use candle_core::{DType, Device};
use moshid_models::mimi::{write_random_checkpoint, Mimi, MimiConfig, MimiError, WeightDtype};
use streams::{fixtures, scenario, Bound};

#[test]
fn streams_in_a_batch_match_each_alone_on_the_fixture() {
    let cfg = MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).unwrap();
    let path = fixtures().join("mimi_small.safetensors");
    for dtype in [WeightDtype::F32, WeightDtype::F16] {
        let load = || Mimi::load_with(&path, &cfg, 8, &Device::Cpu, dtype).expect("weights load");
        scenario(&format!("fixture {dtype:?}"), &load, 30, Bound::EXACT);
    }
}

/// A mid-sized model, whose products are large enough to be split over the worker threads
/// (the streams' rows then share tasks).
#[test]
fn streams_in_a_batch_match_each_alone_on_a_mid_sized_model() {
    let mut cfg = MimiConfig::v0_1();
    cfg.seanet.n_filters = 16;
    cfg.seanet.dimension = 256;
    cfg.transformer.d_model = 256;
    cfg.transformer.num_heads = 4;
    cfg.transformer.num_layers = 2;
    cfg.transformer.dim_feedforward = 1024;
    cfg.transformer.context = 20;
    cfg.quantizer.dimension = 64;
    cfg.quantizer.bins = 256;
    cfg.quantizer.n_q = 8;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mimi.safetensors");
    write_random_checkpoint(&cfg, 5, &path).unwrap();
    let load = || Mimi::load(&path, &cfg, 8, &Device::Cpu).expect("weights load");
    scenario("mid-sized f32", &load, 20, Bound::EXACT);
}

/// The candle path (CUDA's code, here on the CPU in half precision): the streams are stacked
/// along a batch dimension through every convolution and linear layer. candle's GEMM may round
/// a product of 2 rows and one of 8 differently (it does in bf16 on x86-64 and in f16 on
/// aarch64; cuBLAS may choose other algorithms for other batch sizes), so the bound is the
/// half precision's own: a near-tie code may flip, and the audio stays far closer to the
/// stream alone than half precision is to f32.
#[test]
fn candle_streams_in_a_batch_match_each_alone() {
    let cfg = MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).unwrap();
    let path = fixtures().join("mimi_small.safetensors");
    let half = Bound {
        codes: 0.98,
        snr_db: 40.0,
    };
    for dtype in [DType::F16, DType::BF16] {
        let load = || Mimi::load_as(&path, &cfg, 8, &Device::Cpu, dtype).expect("weights load");
        assert_eq!(load().kernels(), "candle");
        scenario(&format!("candle {dtype:?}"), &load, 30, half);
    }
}

#[test]
fn batched_steps_check_their_inputs() {
    let cfg = MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).unwrap();
    let path = fixtures().join("mimi_small.safetensors");
    let m = Mimi::load(&path, &cfg, 8, &Device::Cpu).unwrap();
    let other = Mimi::load(&path, &cfg, 8, &Device::Cpu).unwrap();
    let (mut a, mut b) = (m.new_stream(), m.new_stream());
    assert!(a.shares_weights(&b) && !a.shares_weights(&other));
    let pcm = vec![0.1f32; 1920];
    let short = vec![0.1f32; 1000];
    let (mut c1, mut c2) = (vec![0u32; 8], vec![0u32; 8]);
    let err = Mimi::encode_step_batch(
        &mut [&mut a, &mut b],
        &[&pcm, &short],
        &mut [&mut c1, &mut c2],
    )
    .unwrap_err();
    assert!(matches!(err, MimiError::Stream { stream: 1, .. }), "{err}");
    let mut o = other.new_stream();
    let err = Mimi::encode_step_batch(
        &mut [&mut a, &mut o],
        &[&pcm, &pcm],
        &mut [&mut c1, &mut c2],
    )
    .unwrap_err();
    assert!(err.to_string().contains("stream 1"), "{err}");
    let (mut p1, mut p2) = (vec![0f32; 1920], vec![0f32; 1920]);
    let bad = vec![64u32; 8];
    let err = Mimi::decode_step_batch(&mut [&mut a, &mut b], &[&c1, &bad], &mut [&mut p1, &mut p2])
        .unwrap_err();
    assert!(matches!(err, MimiError::Stream { stream: 1, .. }), "{err}");
}

/// A stream's state is what a conversation adds: both transformers' key/value rings at full
/// context and the buffers, far less than the weights.
#[test]
fn stream_state_is_small_and_counted() {
    let cfg = MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).unwrap();
    let path = fixtures().join("mimi_small.safetensors");
    let m = Mimi::load(&path, &cfg, 8, &Device::Cpu).unwrap();
    let state = m.stream_state_bytes();
    let t = &cfg.transformer;
    // Each ring holds context + 2 positions (one frame's two 25 Hz steps) of keys and values.
    let kv = 2 * t.num_layers * 2 * (t.context + 2) * t.d_model * 4;
    let weights = m.weight_bytes().unwrap();
    println!("stream state {state} bytes (key/value rings {kv}), weights {weights} bytes");
    assert!(state >= kv, "state {state} < key/value rings {kv}");
    assert!(state < weights, "state {state} >= weights {weights}");
    assert_eq!(state, m.new_stream().stream_state_bytes());
}
