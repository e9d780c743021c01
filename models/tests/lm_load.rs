//! LM loading and quantization refuse what is not exactly a checkpoint of the configuration:
//! NaN weights, stray tensors, a Mimi file, an empty file, an output that is the input; the
//! tensor list comes from the loader; GGUF files carry their configuration.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use moshid_models::lm::{
    checkpoint_tensors, estimate_memory, quantize_file, write_random_checkpoint, Layout, LmConfig,
    LmError, LmGen, LmModel, QuantType, Sampling,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn cfg() -> LmConfig {
    LmConfig::from_json_file(&fixtures().join("lm/config.json")).unwrap()
}

fn fixture_tensors(layout: &str) -> HashMap<String, Tensor> {
    let p = fixtures().join(format!("lm/model_{layout}.safetensors"));
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn with_nan(mut t: HashMap<String, Tensor>, name: &str) -> HashMap<String, Tensor> {
    let x = &t[name];
    let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
    v[5] = f32::NAN;
    let y = Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap();
    t.insert(name.into(), y);
    t
}

#[test]
fn the_tensor_list_is_the_loaders_and_matches_the_release_counts() {
    // SPEC: the 7B has 523 tensors in the candle layout and 355 in the PyTorch one.
    let v = LmConfig::v0_1();
    assert_eq!(checkpoint_tensors(&v, Layout::Candle).unwrap().len(), 523);
    assert_eq!(checkpoint_tensors(&v, Layout::PyTorch).unwrap().len(), 355);
    // The fixtures (written by the reference) hold exactly the listed tensors and shapes.
    for (layout, name) in [(Layout::Candle, "candle"), (Layout::PyTorch, "pytorch")] {
        let ours: HashMap<String, Vec<usize>> = checkpoint_tensors(&cfg(), layout)
            .unwrap()
            .into_iter()
            .collect();
        let file: HashMap<String, Vec<usize>> = fixture_tensors(name)
            .into_iter()
            .map(|(k, t)| (k, t.dims().to_vec()))
            .collect();
        assert_eq!(ours, file, "{name}");
    }
}

#[test]
fn random_checkpoints_are_what_the_loader_reads() {
    let dir = tempfile::tempdir().unwrap();
    for layout in [Layout::Candle, Layout::PyTorch] {
        let p = dir.path().join("r.safetensors");
        write_random_checkpoint(&cfg(), 3, &p, layout).unwrap();
        let m = LmModel::load(&p, &cfg(), None, &Device::Cpu).unwrap();
        assert_eq!(m.layout(), layout);
    }
}

#[test]
fn nan_weights_are_refused_at_load_and_at_quantize() {
    let dir = tempfile::tempdir().unwrap();
    let name = "transformer.layers.0.gating.linear_in.weight";
    let p = dir.path().join("nan.safetensors");
    candle_core::safetensors::save(&with_nan(fixture_tensors("candle"), name), &p).unwrap();
    let err = LmModel::load(&p, &cfg(), None, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(name) && err.contains("NaN") && err.contains("nan.safetensors"),
        "{err}"
    );
    let out = dir.path().join("nan.gguf");
    let err = quantize_file(&p, &out, QuantType::Q8_0, &cfg())
        .unwrap_err()
        .to_string();
    assert!(err.contains(name) && err.contains("NaN"), "{err}");
    assert!(!out.exists(), "no half-written output");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary left"
    );

    // A GGUF written by another tool: a NaN block scale in a q8_0 weight, then a NaN in an
    // f32 norm.
    for (bad, patch_scale) in [(name, true), ("transformer.layers.1.norm2.alpha", false)] {
        let t = if patch_scale {
            fixture_tensors("candle")
        } else {
            with_nan(fixture_tensors("candle"), bad)
        };
        let q: Vec<(String, QTensor)> = t
            .iter()
            .map(|(k, v)| {
                let ty = if v.rank() == 2 {
                    GgmlDType::Q8_0
                } else {
                    GgmlDType::F32
                };
                let mut q = QTensor::quantize(v, ty).unwrap();
                if patch_scale && k == bad {
                    let mut data = q.data().unwrap().into_owned();
                    data[34 * 3..34 * 3 + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
                    let st = candle_core::quantized::QStorage::from_data(
                        std::borrow::Cow::Owned(data),
                        &Device::Cpu,
                        ty,
                    )
                    .unwrap();
                    q = QTensor::new(st, v.shape()).unwrap();
                }
                (k.clone(), q)
            })
            .collect();
        let refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let g = dir.path().join("other.gguf");
        let mut f = std::fs::File::create(&g).unwrap();
        gguf_file::write(&mut f, &[], &refs).unwrap();
        drop(f);
        let err = LmModel::load(&g, &cfg(), None, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(bad) && err.contains("NaN"), "{err}");
    }
}

#[test]
fn a_stray_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut t = fixture_tensors("pytorch");
    t.insert(
        "extra.weight".into(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = dir.path().join("extra.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    let err = LmModel::load(&p, &cfg(), None, &Device::Cpu).unwrap_err();
    assert!(matches!(err, LmError::UnexpectedTensor { .. }), "{err}");
    assert!(err.to_string().contains("`extra.weight`"), "{err}");
}

#[test]
fn quantize_refuses_what_is_not_an_lm_checkpoint_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.gguf");
    // A Mimi checkpoint.
    let mimi = fixtures().join("mimi/mimi_small.safetensors");
    let err = quantize_file(&mimi, &out, QuantType::Q8_0, &cfg()).unwrap_err();
    assert!(
        err.to_string().contains("is this an LM checkpoint"),
        "{err}"
    );
    // A safetensors file with no tensors.
    let empty = dir.path().join("empty.safetensors");
    candle_core::safetensors::save(&HashMap::<String, Tensor>::new(), &empty).unwrap();
    let err = quantize_file(&empty, &out, QuantType::Q8_0, &cfg()).unwrap_err();
    assert!(err.to_string().contains("empty.safetensors"), "{err}");
    // The 7B configuration against the small fixture.
    let small = fixtures().join("lm/model_candle.safetensors");
    let err = quantize_file(&small, &out, QuantType::Q8_0, &LmConfig::v0_1()).unwrap_err();
    assert!(matches!(err, LmError::TensorShape { .. }), "{err}");
    assert!(!out.exists());
}

#[test]
fn quantize_onto_its_own_input_is_refused_and_keeps_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    std::fs::copy(fixtures().join("lm/model_candle.safetensors"), &p).unwrap();
    let before = std::fs::read(&p).unwrap();
    let link = dir.path().join("link.safetensors");
    std::fs::hard_link(&p, &link).unwrap();
    for out in [&p, &link, &dir.path().join(".").join("m.safetensors")] {
        let err = quantize_file(&p, out, QuantType::Q8_0, &cfg()).unwrap_err();
        assert!(err.to_string().contains("is the input file"), "{err}");
    }
    assert_eq!(std::fs::read(&p).unwrap(), before);
}

#[test]
fn a_quantized_file_loads_without_a_side_json() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("q.gguf");
    let src = fixtures().join("lm/model_pytorch.safetensors");
    quantize_file(&src, &out, QuantType::Q4_0, &cfg()).unwrap();
    let c = LmConfig::for_checkpoint(None, &out).unwrap();
    assert_eq!(c, cfg());
    LmModel::load(&out, &c, None, &Device::Cpu).unwrap();
    // A safetensors file carries none: the 7B default.
    assert_eq!(LmConfig::stored_in(&src).unwrap(), None);
    assert_eq!(
        LmConfig::for_checkpoint(None, &src).unwrap(),
        LmConfig::v0_1()
    );
}

#[test]
fn absurd_contexts_and_sampling_are_errors_not_aborts() {
    let src = fixtures().join("lm/model_candle.safetensors");
    let err = estimate_memory(&src, &cfg(), DType::F32, usize::MAX).unwrap_err();
    assert!(err.to_string().contains("64-bit"), "{err}");
    let m = LmModel::load(&src, &cfg(), None, &Device::Cpu).unwrap();
    let m = std::sync::Arc::new(m);
    let s = Sampling::default();
    for context in [0, usize::MAX, 1 << 50] {
        assert!(
            LmGen::new(m.clone(), s, context).is_err(),
            "context {context}"
        );
    }
    let bad = [
        Sampling {
            temp_text: f64::NAN,
            ..s
        },
        Sampling {
            temp_audio: -1.0,
            ..s
        },
        Sampling {
            temp_text: f64::INFINITY,
            ..s
        },
        Sampling { top_k: 0, ..s },
        Sampling {
            top_k: 1 << 40,
            ..s
        },
    ];
    for b in bad {
        let err = LmGen::new(m.clone(), b, 100).err().expect("refused");
        assert!(err.to_string().contains("use"), "{err}");
    }
    assert!(LmGen::new(
        m,
        Sampling {
            greedy: true,
            temp_text: f64::NAN,
            ..s
        },
        100
    )
    .is_ok());
}

#[test]
fn zero_or_huge_sizes_in_a_config_are_refused() {
    let text = std::fs::read_to_string(fixtures().join("lm/config.json")).unwrap();
    for (key, value) in [
        ("num_heads", serde_json::json!(0)),
        ("dim", serde_json::json!(0)),
        ("num_layers", serde_json::json!(1u64 << 40)),
        ("depformer_num_heads", serde_json::json!(0)),
        ("hidden_scale", serde_json::json!(-1.0)),
        ("context", serde_json::json!(0)),
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[key] = value;
        let err = LmConfig::from_json_str(&v.to_string(), "c.json").unwrap_err();
        assert!(err.to_string().contains(key), "{key}: {err}");
    }
}
