//! The built-in demo model: Mimi and Moshi's architecture at a small size with random
//! weights, generated deterministically (seeded by the voice name) and cached, plus a
//! small word table as its text vocabulary. It needs no download and runs in real time
//! on a small CPU; what it says is noise, and the demo says so.

use crate::model_spec::ModelSpec;
use moshid_models::lm::{Layout, LmConfig};
use moshid_models::mimi::{MimiConfig, QuantizerConfig, SeanetConfig, TransformerConfig};
use std::path::{Path, PathBuf};

/// Building the demo model failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the demo model in {path}: {message}")]
pub struct DemoError {
    /// Folder.
    pub path: PathBuf,
    /// What failed.
    pub message: String,
}

/// Bump when the demo model changes, so stale caches are not reused.
const VERSION: &str = "v3";

/// Words of the demo vocabulary (ids 4..); ids 0-3 are Moshi's special text tokens.
const WORDS: &str = "the be to of and a in that have it for not on with he as you do at this \
but his by from they we say her she or an will my one all would there their what so up out \
if about who get which go me when make can like time no just him know take people into year \
your good some could them see other than then now look only come its over think also back \
after use two how our work first well way even new want because any these give day most us \
hello hi yes okay sure thanks please sorry great nice fine right sound voice music light \
lights kitchen room home house door window warm cold weather today tomorrow morning evening \
night timer minute minutes hour alarm play stop start pause next turn off on open close \
volume louder quieter coffee tea water dinner lunch breakfast story joke question answer \
friend family happy sad maybe really very much more less little big small long short old \
young here where why again still never always sometimes together moshi listen talk speak \
hear understand remember forget help thing things idea world life love feel try tell ask \
call name place point hand part child eye woman man week month bed table chair book \
phone car garden dog cat bird tree flower rain snow sun wind cloud song dance game team \
city street shop money job school teacher doctor";

/// Number of text tokens of the demo LM (4 specials + the word table, rounded up).
pub const TEXT_CARD: usize = 256;

/// The demo Mimi: the released architecture (same SEANet ratios, causal transformer,
/// split RVQ with 2048-entry codebooks) at a fraction of the width and depth.
pub fn mimi_config() -> MimiConfig {
    MimiConfig {
        sample_rate: 24_000,
        channels: 1,
        frame_rate: 12.5,
        seanet: SeanetConfig {
            channels: 1,
            dimension: 128,
            n_filters: 8,
            n_residual_layers: 1,
            ratios: vec![8, 6, 5, 4],
            kernel_size: 7,
            residual_kernel_size: 3,
            last_kernel_size: 3,
            dilation_base: 2,
            compress: 2,
        },
        transformer: TransformerConfig {
            d_model: 128,
            num_heads: 4,
            num_layers: 2,
            dim_feedforward: 256,
            context: 250,
            max_period: 10_000.0,
        },
        quantizer: QuantizerConfig {
            dimension: 64,
            n_q: 8,
            bins: 2048,
        },
    }
}

/// The demo LM: Moshi's streams, delays and depth transformer, much smaller.
pub fn lm_config() -> LmConfig {
    let mut c = LmConfig::v0_1();
    c.dim = 128;
    c.text_card = TEXT_CARD;
    c.num_heads = 4;
    c.num_layers = 2;
    c.depformer_dim = 64;
    c.depformer_dim_feedforward = Some(128);
    c.depformer_num_heads = 2;
    c.depformer_num_layers = 1;
    c
}

/// The text pieces by token id (SentencePiece style: `▁` starts a word).
pub fn pieces() -> Vec<String> {
    let mut p: Vec<String> = ["<epad>", "<unk>", "<s>", "<pad>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for w in WORDS.split_whitespace() {
        if p.len() == TEXT_CARD {
            break;
        }
        p.push(format!("▁{w}"));
    }
    while p.len() < TEXT_CARD {
        p.push(format!("▁w{}", p.len()));
    }
    p
}

/// A stable 64-bit seed from the voice name (FNV-1a), so each demo voice differs.
pub fn seed_for(voice: &str) -> u64 {
    voice.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Builds (once) and returns the demo model for `voice` under `cache_dir/demo/`.
pub fn ensure(cache_dir: &Path, voice: &str) -> Result<ModelSpec, DemoError> {
    let dir = cache_dir.join("demo").join(format!("{VERSION}-{voice}"));
    let spec = ModelSpec {
        label: "demo model (random weights)".into(),
        lm: dir.join("lm.safetensors"),
        lm_config: lm_config(),
        mimi: dir.join("mimi.safetensors"),
        mimi_config: mimi_config(),
        tokenizer: dir.join("pieces.txt"),
    };
    if dir.join("complete").exists() {
        return Ok(spec);
    }
    build(cache_dir, voice, &dir)?;
    Ok(spec)
}

/// Writes the demo model into a private folder and renames it to `dir`.
fn build(cache_dir: &Path, voice: &str, dir: &Path) -> Result<(), DemoError> {
    let err = |message: String| DemoError {
        path: dir.to_path_buf(),
        message,
    };
    // Build in a private folder and rename it into place: a crash never leaves a
    // half-written model where the next run would pick it up.
    let tmp = cache_dir
        .join("demo")
        .join(format!(".{VERSION}-{voice}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| {
        err(format!(
            "{e} (is cache_dir writable? set cache_dir or --cache-dir)"
        ))
    })?;
    let seed = seed_for(voice);
    let lm = lm_config();
    moshid_models::mimi::write_random_checkpoint(
        &mimi_config(),
        seed,
        &tmp.join("mimi.safetensors"),
    )
    .map_err(|e| err(e.to_string()))?;
    moshid_models::lm::write_random_checkpoint(
        &lm,
        seed ^ 1,
        &tmp.join("lm.safetensors"),
        Layout::Candle,
    )
    .map_err(|e| err(e.to_string()))?;
    std::fs::write(tmp.join("pieces.txt"), pieces().join("\n")).map_err(|e| err(e.to_string()))?;
    std::fs::write(tmp.join("complete"), VERSION).map_err(|e| err(e.to_string()))?;
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {}
        // Another process won the race: use its copy.
        Err(_) if dir.join("complete").exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::rename(&tmp, dir).map_err(|e2| err(format!("{e}; {e2}")))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_valid_and_pieces_fit() {
        mimi_config().validate().expect("demo Mimi config");
        lm_config().validate().expect("demo LM config");
        let p = pieces();
        assert_eq!(p.len(), TEXT_CARD);
        assert_eq!(p[3], "<pad>");
        assert_eq!(p[4], "▁the");
        assert_ne!(seed_for("moshiko"), seed_for("moshika"));
    }
}
