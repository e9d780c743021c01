//! Fuzz entry points for the parsers of outside input in this crate: checkpoints
//! (safetensors and GGUF, through the real loaders), configuration JSON and the SentencePiece
//! model. The cargo-fuzz targets in `fuzz/` call these, and `cargo test` replays the committed
//! corpora through them (`models/tests/fuzz_corpus.rs`), so a crash found once stays fixed.
//!
//! Every function must return for any input; an error is an answer, a panic, a hang or an
//! allocation out of proportion to the input is a bug. Not part of the API.

use std::io::Write;
use std::path::PathBuf;

use candle_core::{DType, Device};

use crate::lm::{LmConfig, LmModel};
use crate::mimi::{Mimi, MimiConfig};

/// The tiny LM configuration checkpoints are checked against (small enough that a whole
/// valid checkpoint is a seed of a few kilobytes: [`write_seeds`] writes them).
pub fn tiny_lm() -> LmConfig {
    let mut c = LmConfig::v0_1();
    (c.dim, c.num_heads, c.num_layers, c.text_card, c.card) = (32, 2, 1, 8, 8);
    (
        c.depformer_dim,
        c.depformer_num_heads,
        c.depformer_num_layers,
    ) = (32, 2, 1);
    (c.hidden_scale, c.depformer_dim_feedforward, c.context) = (1.0, Some(24), 8);
    c
}

/// The tiny Mimi configuration checkpoints are checked against.
pub fn tiny_mimi() -> MimiConfig {
    let mut c = MimiConfig::v0_1();
    (c.seanet.n_filters, c.seanet.dimension) = (2, 8);
    let t = &mut c.transformer;
    (
        t.d_model,
        t.num_heads,
        t.num_layers,
        t.dim_feedforward,
        t.context,
    ) = (8, 2, 1, 16, 4);
    (c.quantizer.dimension, c.quantizer.n_q, c.quantizer.bins) = (4, 2, 4);
    c
}

/// The loaders read files: `data` is written to a per-process file (in /dev/shm when it
/// exists, so that no disk is involved).
fn as_file(data: &[u8]) -> Option<PathBuf> {
    let dir = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let p = dir.join(format!("moshid-fuzz-{}.bin", std::process::id()));
    let mut f = std::fs::File::create(&p).ok()?;
    f.write_all(data).ok()?;
    Some(p)
}

/// A checkpoint file of either format, through the LM and Mimi loaders and the memory estimate.
pub fn checkpoint(data: &[u8]) {
    let Some(p) = as_file(data) else { return };
    let (lm, mimi) = (tiny_lm(), tiny_mimi());
    let _ = crate::lm::estimate_memory(&p, &lm, DType::F32, 100);
    let _ = LmConfig::stored_in(&p);
    let _ = LmModel::load(&p, &lm, Some(DType::F32), &Device::Cpu);
    let _ = Mimi::load(&p, &mimi, 2, &Device::Cpu);
    let _ = std::fs::remove_file(&p);
}

/// A GGUF header and tensor table.
pub fn gguf_header(data: &[u8]) {
    let _ = crate::lm::gguf_read::read_header(data, data.len() as u64);
}

/// `lm_kwargs` JSON (and what is computed from an accepted configuration).
pub fn lm_config(data: &[u8]) {
    if let Ok(c) = LmConfig::from_json_str(&String::from_utf8_lossy(data), "fuzz") {
        let _ = (
            c.hidden(),
            c.depformer_hidden(),
            c.max_delay(),
            c.norm_eps(),
        );
        let _ = crate::lm::MemoryEstimate::kv_bytes(&c, c.context, DType::F32);
    }
}

/// Mimi configuration JSON (and what is computed from an accepted configuration).
pub fn mimi_config(data: &[u8]) {
    if let Ok(c) = MimiConfig::from_json_str(&String::from_utf8_lossy(data), "fuzz") {
        let _ = (c.frame_size(), c.hop_length(), c.downsample_stride());
    }
}

/// A SentencePiece model, then decoding every id and a few out of range.
pub fn sentencepiece(data: &[u8]) {
    if let Ok(t) = crate::tokenizer::TextTokenizer::from_bytes(data) {
        let n = t.vocab_size() as u32;
        let ids: Vec<u32> = (0..n.min(4096)).chain([n, n + 1, u32::MAX]).collect();
        let _ = t.decode(&ids);
        let mut st = t.stream();
        let mut out = String::new();
        for &i in &ids {
            st.push(i, &mut out);
        }
        st.finish(&mut out);
    }
}

/// Writes seed inputs for every target into `dir/<target>/`: valid files of each kind
/// (tiny checkpoints in both layouts and formats, configurations) to start from.
pub fn write_seeds(dir: &std::path::Path) -> std::io::Result<()> {
    let io = |e: String| std::io::Error::other(e);
    let d = |t: &str| -> std::io::Result<PathBuf> {
        let p = dir.join(t);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    };
    let (lm, mimi) = (tiny_lm(), tiny_mimi());
    let ck = d("checkpoint")?;
    use crate::lm::{Layout, QuantType};
    for (name, layout) in [
        ("lm_candle", Layout::Candle),
        ("lm_pytorch", Layout::PyTorch),
    ] {
        let p = ck.join(format!("{name}.safetensors"));
        crate::lm::write_random_checkpoint(&lm, 1, &p, layout).map_err(|e| io(e.to_string()))?;
    }
    crate::lm::write_random_gguf(&lm, 1, &ck.join("lm.gguf"), QuantType::Q8_0)
        .map_err(|e| io(e.to_string()))?;
    crate::mimi::write_random_checkpoint(&mimi, 1, &ck.join("mimi.safetensors"))
        .map_err(|e| io(e.to_string()))?;
    std::fs::copy(ck.join("lm.gguf"), d("gguf_header")?.join("lm.gguf"))?;
    std::fs::write(d("lm_config")?.join("tiny.json"), json(&lm))?;
    std::fs::write(d("lm_config")?.join("v0_1.json"), json(&LmConfig::v0_1()))?;
    std::fs::write(d("mimi_config")?.join("tiny.json"), json(&mimi))?;
    std::fs::write(
        d("mimi_config")?.join("v0_1.json"),
        json(&MimiConfig::v0_1()),
    )?;
    std::fs::write(d("sentencepiece")?.join("tiny.model"), tiny_spm())?;
    Ok(())
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// A SentencePiece `ModelProto` with one piece of each kind (unknown, control, normal with
/// the word-boundary mark, byte).
fn tiny_spm() -> Vec<u8> {
    let mut out = Vec::new();
    for (piece, kind) in [
        ("<unk>", 2u8),
        ("<s>", 3),
        ("</s>", 3),
        ("\u{2581}hi", 1),
        ("x", 1),
        ("<0x41>", 6),
    ] {
        let mut m = vec![0x0a, piece.len() as u8];
        m.extend_from_slice(piece.as_bytes());
        m.extend_from_slice(&[0x15, 0, 0, 0, 0, 0x18, kind]);
        out.push(0x0a);
        out.push(m.len() as u8);
        out.extend(m);
    }
    out
}
