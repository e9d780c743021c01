//! Loading: the full-size name/shape list against the reference's manifest, clear errors on
//! wrong files, and random checkpoints that give varied codes on speech.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use moshid_models::mimi::{
    expected_tensors, write_random_checkpoint, Mimi, MimiConfig, MimiError, FRAME_SAMPLES,
    SAMPLE_RATE,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mimi")
}

fn small() -> MimiConfig {
    MimiConfig::from_json_file(&fixtures().join("mimi_config.json")).expect("fixture config")
}

/// A fresh temporary folder, removed when the returned value drops.
fn tmpdir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("moshid-mimi-{name}-"))
        .tempdir()
        .expect("temp dir")
}

#[test]
fn full_size_names_and_shapes_match_the_reference_manifest() {
    let text = std::fs::read_to_string(fixtures().join("manifest_v0_1.json")).unwrap();
    let manifest: BTreeMap<String, Vec<usize>> = serde_json::from_str(&text).unwrap();
    let ours: BTreeMap<String, Vec<usize>> = expected_tensors(&MimiConfig::v0_1())
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(manifest.len(), 318, "the released file has 318 tensors");
    for (k, v) in &manifest {
        assert_eq!(ours.get(k), Some(v), "reference tensor {k} {v:?}");
    }
    for k in ours.keys() {
        assert!(
            manifest.contains_key(k),
            "we expect {k}, the reference has no such tensor"
        );
    }
    let params: usize = ours
        .iter()
        .filter(|(k, _)| !k.contains("_codebook"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    assert_eq!(params, 79_308_609);
    assert_eq!(MimiConfig::v0_1().frame_size(), FRAME_SAMPLES);
    assert_eq!(MimiConfig::v0_1().sample_rate, SAMPLE_RATE);
}

#[test]
fn full_size_random_checkpoint_loads_and_runs() {
    let dir = tmpdir("full");
    let path = dir.path().join("mimi.safetensors");
    let cfg = MimiConfig::v0_1();
    write_random_checkpoint(&cfg, 7, &path).expect("write");
    let mut m = Mimi::load(&path, &cfg, 8, &Device::Cpu).expect("load full size");
    assert_eq!((m.num_codebooks(), m.cardinality()), (8, 2048));
    let pcm: Vec<f32> = (0..FRAME_SAMPLES)
        .map(|i| (i as f32 * 0.05).sin() * 0.3)
        .collect();
    let mut codes = [0u32; 8];
    m.encode_step(&pcm, &mut codes).unwrap();
    let mut out = vec![0f32; FRAME_SAMPLES];
    m.decode_step(&codes, &mut out).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}

/// Rewrites the fixture weights through `edit` and returns the load error.
fn load_edited(name: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> MimiError {
    let mut t =
        candle_core::safetensors::load(fixtures().join("mimi_small.safetensors"), &Device::Cpu)
            .unwrap();
    edit(&mut t);
    let dir = tmpdir(name);
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&t, &path).unwrap();
    Mimi::load(&path, &small(), 8, &Device::Cpu).expect_err("must not load")
}

#[test]
fn missing_tensor_is_named() {
    let name = "decoder_transformer.transformer.layers.1.linear2.weight";
    let err = load_edited("missing", |t| {
        t.remove(name);
    });
    let msg = err.to_string();
    assert!(matches!(err, MimiError::MissingTensor { .. }), "{msg}");
    assert!(msg.contains(name) && msg.contains("missing"), "{msg}");
}

#[test]
fn misshaped_tensor_is_named() {
    let name = "quantizer.rvq_rest.vq.layers.3._codebook.embedding_sum";
    let err = load_edited("shape", |t| {
        t.insert(
            name.into(),
            Tensor::zeros((64, 31), candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let msg = err.to_string();
    assert!(matches!(err, MimiError::WrongShape { .. }), "{msg}");
    assert!(
        msg.contains(name) && msg.contains("[64, 31]") && msg.contains("[64, 32]"),
        "{msg}"
    );
}

#[test]
fn extra_tensor_is_named() {
    let err = load_edited("extra", |t| {
        t.insert(
            "lm.head.weight".into(),
            Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        err.to_string()
            .contains("unexpected tensor `lm.head.weight`"),
        "{err}"
    );
}

#[test]
fn nan_weights_are_refused_with_the_tensor_name() {
    let name = "encoder_transformer.transformer.layers.0.linear1.weight";
    let err = load_edited("nan", |t| {
        let x = &t[name];
        let mut v: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        v[3] = f32::NAN;
        let y = Tensor::from_vec(v, x.shape(), &Device::Cpu).unwrap();
        t.insert(name.into(), y);
    });
    let msg = err.to_string();
    assert!(
        msg.contains(name) && msg.contains("NaN") && msg.contains("w.safetensors"),
        "{msg}"
    );
}

#[test]
fn the_random_writer_writes_exactly_what_the_loader_asks_for() {
    let dir = tmpdir("writer");
    let path = dir.path().join("m.safetensors");
    let cfg = small();
    write_random_checkpoint(&cfg, 1, &path).unwrap();
    let written: BTreeMap<String, Vec<usize>> = candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.dims().to_vec()))
        .collect();
    let expected: BTreeMap<String, Vec<usize>> =
        expected_tensors(&cfg).unwrap().into_iter().collect();
    assert_eq!(written, expected);
    // Only the first codebooks are computed with, the others are still required.
    Mimi::load(&path, &cfg, 2, &Device::Cpu).expect("2 of 8 codebooks");
}

#[test]
fn truncated_or_foreign_files_are_rejected() {
    let dir = tmpdir("trunc");
    let bytes = std::fs::read(fixtures().join("mimi_small.safetensors")).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let err = Mimi::load(&cut, &small(), 8, &Device::Cpu).expect_err("truncated");
    assert!(err.to_string().contains("cut.safetensors"), "{err}");
    let wav = fixtures().join("speech_24k.wav");
    let err = Mimi::load(&wav, &small(), 8, &Device::Cpu).expect_err("a WAV");
    assert!(err.to_string().contains("safetensors"), "{err}");
    let err = Mimi::load(
        Path::new("/nonexistent/m.safetensors"),
        &small(),
        8,
        &Device::Cpu,
    )
    .expect_err("missing");
    assert!(
        err.to_string().contains("/nonexistent/m.safetensors"),
        "{err}"
    );
}

#[test]
fn bad_arguments_are_errors() {
    let w = fixtures().join("mimi_small.safetensors");
    for k in [0, 33] {
        let err = Mimi::load(&w, &small(), k, &Device::Cpu).expect_err("codebooks");
        assert!(matches!(err, MimiError::NumCodebooks { .. }), "{err}");
    }
    let mut m = Mimi::load(&w, &small(), 8, &Device::Cpu).unwrap();
    let mut codes = [0u32; 8];
    let err = m
        .encode_step(&[0.0; 1000], &mut codes)
        .expect_err("short frame");
    assert!(err.to_string().contains("1920"), "{err}");
    let mut pcm = vec![0f32; 1920];
    let err = m
        .decode_step(&[0, 1, 2, 3, 4, 5, 6, 64], &mut pcm)
        .expect_err("range");
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = m.decode(&[vec![1, 2, 3]]).expect_err("count");
    assert!(err.to_string().contains("3 codes"), "{err}");
}

#[test]
fn random_checkpoint_is_deterministic_and_gives_varied_codes_on_speech() {
    let dir = tmpdir("random");
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let cfg = small();
    write_random_checkpoint(&cfg, 42, &a).unwrap();
    write_random_checkpoint(&cfg, 42, &b).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    let mut wav = hound::WavReader::open(fixtures().join("speech_24k.wav")).unwrap();
    assert_eq!(wav.spec().sample_rate, SAMPLE_RATE);
    let pcm: Vec<f32> = wav
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect();
    let m = Mimi::load(&a, &cfg, 8, &Device::Cpu).unwrap();
    let codes = m.encode(&pcm).unwrap();
    for level in 0..8 {
        let distinct: std::collections::HashSet<u32> = codes.iter().map(|f| f[level]).collect();
        println!(
            "level {level}: {} distinct codes in {} frames",
            distinct.len(),
            codes.len()
        );
        assert!(
            distinct.len() >= 10,
            "level {level}: only {} distinct codes",
            distinct.len()
        );
    }
}
