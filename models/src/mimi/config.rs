//! Mimi hyper-parameters.
//!
//! The JSON layout is the one the reference package's `get_mimi(mimi_config=...)` takes
//! (`seanet`, `transformer`, `quantizer` sub-objects with the reference's keyword names), so one
//! file drives both implementations. Keys moshid does not need are ignored.

use serde::{Deserialize, Serialize};

use super::MimiError;

/// SEANet encoder/decoder hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeanetConfig {
    /// Audio channels (1).
    pub channels: usize,
    /// Latent dimension at the SEANet output.
    pub dimension: usize,
    /// Base number of filters (doubled at each downsampling).
    pub n_filters: usize,
    /// Residual blocks per resolution.
    pub n_residual_layers: usize,
    /// Up-sampling ratios in decoder order (the encoder uses them reversed).
    pub ratios: Vec<usize>,
    /// Kernel of the first convolution.
    pub kernel_size: usize,
    /// Kernel of the residual blocks' first convolution.
    pub residual_kernel_size: usize,
    /// Kernel of the last convolution.
    pub last_kernel_size: usize,
    /// Dilation growth across residual blocks.
    pub dilation_base: usize,
    /// Channel reduction inside residual blocks.
    pub compress: usize,
}

/// The causal transformers around the latent (encoder and decoder share one config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerConfig {
    /// Model width; must equal the SEANet dimension (no projections in Mimi).
    pub d_model: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Layers.
    pub num_layers: usize,
    /// Feed-forward hidden width.
    pub dim_feedforward: usize,
    /// Attention window in encoder steps (250 = 10 s at 25 Hz).
    pub context: usize,
    /// RoPE maximum period.
    pub max_period: f64,
}

/// Split residual vector quantizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizerConfig {
    /// Codebook vector dimension.
    pub dimension: usize,
    /// Total codebooks (1 semantic + `n_q - 1` acoustic).
    pub n_q: usize,
    /// Entries per codebook.
    pub bins: usize,
}

/// Complete Mimi configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MimiConfig {
    /// Audio sample rate in Hz.
    pub sample_rate: u32,
    /// Audio channels (1).
    pub channels: usize,
    /// Code frames per second (12.5).
    pub frame_rate: f64,
    /// SEANet part.
    pub seanet: SeanetConfig,
    /// Transformer part.
    pub transformer: TransformerConfig,
    /// Quantizer part.
    pub quantizer: QuantizerConfig,
}

impl MimiConfig {
    /// The released Mimi (`tokenizer-e351c8d8-checkpoint125.safetensors`).
    pub fn v0_1() -> Self {
        Self {
            sample_rate: 24_000,
            channels: 1,
            frame_rate: 12.5,
            seanet: SeanetConfig {
                channels: 1,
                dimension: 512,
                n_filters: 64,
                n_residual_layers: 1,
                ratios: vec![8, 6, 5, 4],
                kernel_size: 7,
                residual_kernel_size: 3,
                last_kernel_size: 3,
                dilation_base: 2,
                compress: 2,
            },
            transformer: TransformerConfig {
                d_model: 512,
                num_heads: 8,
                num_layers: 8,
                dim_feedforward: 2048,
                context: 250,
                max_period: 10_000.0,
            },
            quantizer: QuantizerConfig {
                dimension: 256,
                n_q: 32,
                bins: 2048,
            },
        }
    }

    /// Reads a config from a JSON file (the reference's `mimi_config` layout).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self, MimiError> {
        let text = std::fs::read_to_string(path).map_err(|e| MimiError::Io {
            path: path.to_path_buf(),
            error: e,
        })?;
        Self::from_json_str(&text, &path.display().to_string())
    }

    /// Parses a config from JSON text (`origin` names where it came from in errors).
    pub fn from_json_str(text: &str, origin: &str) -> Result<Self, MimiError> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| {
            MimiError::Config(format!(
                "{origin}: not a Mimi config JSON ({e}); expected keys sample_rate, frame_rate, seanet, transformer, quantizer"
            ))
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Audio samples per SEANet latent step (product of the ratios; saturates, which
    /// [`MimiConfig::validate`] refuses).
    pub fn hop_length(&self) -> usize {
        self.seanet
            .ratios
            .iter()
            .try_fold(1usize, |a, &r| a.checked_mul(r))
            .unwrap_or(usize::MAX)
    }

    /// Audio samples per code frame.
    pub fn frame_size(&self) -> usize {
        (self.sample_rate as f64 / self.frame_rate).round() as usize
    }

    /// Latent steps per code frame (the learnt down/upsampling stride).
    pub fn downsample_stride(&self) -> usize {
        self.frame_size() / self.hop_length().max(1)
    }

    /// Checks the constraints the implementation relies on.
    pub fn validate(&self) -> Result<(), MimiError> {
        let bad = |m: String| Err(MimiError::Config(m));
        let s = &self.seanet;
        let t = &self.transformer;
        let q = &self.quantizer;
        if self.channels != 1 || s.channels != 1 {
            return bad("only mono Mimi (channels = 1) is supported".into());
        }
        if s.ratios.is_empty() || s.ratios.len() > 8 || s.ratios.iter().any(|&r| r == 0 || r > 64) {
            return bad("seanet.ratios must be 1 to 8 integers in 1..=64".into());
        }
        self.validate_sizes()?;
        if !self.frame_rate.is_finite() || self.frame_rate <= 0.0 || self.sample_rate == 0 {
            return bad("sample_rate and frame_rate must be positive".into());
        }
        let fs = self.frame_size();
        if (fs as f64 - self.sample_rate as f64 / self.frame_rate).abs() > 1e-9 {
            return bad("sample_rate / frame_rate must be an integer".into());
        }
        if !fs.is_multiple_of(self.hop_length()) || self.downsample_stride() < 1 {
            return bad(format!(
                "frame size {fs} must be a multiple of the SEANet hop {}",
                self.hop_length()
            ));
        }
        if s.compress == 0 || !s.n_filters.is_multiple_of(s.compress) || s.n_filters == 0 {
            return bad("seanet.n_filters must be a positive multiple of seanet.compress".into());
        }
        if t.d_model != s.dimension {
            return bad(format!(
                "transformer.d_model ({}) must equal seanet.dimension ({})",
                t.d_model, s.dimension
            ));
        }
        if t.num_heads == 0
            || !t.d_model.is_multiple_of(t.num_heads)
            || !(t.d_model / t.num_heads).is_multiple_of(2)
        {
            return bad("transformer.d_model must split into an even head size".into());
        }
        if t.context == 0 {
            return bad("transformer.context must be positive".into());
        }
        if q.n_q < 2 || q.bins == 0 || q.dimension == 0 {
            return bad("quantizer needs n_q >= 2, bins > 0, dimension > 0".into());
        }
        Ok(())
    }

    /// Upper bounds far above the released model's, so that no size computed from them
    /// (channels doubled per ratio, tensor shapes, frame sizes) overflows.
    fn validate_sizes(&self) -> Result<(), MimiError> {
        let (s, t, q) = (&self.seanet, &self.transformer, &self.quantizer);
        for (key, v, max) in [
            ("sample_rate", self.sample_rate as usize, 384_000),
            ("seanet.dimension", s.dimension, 1 << 16),
            ("seanet.n_filters", s.n_filters, 1 << 12),
            ("seanet.n_residual_layers", s.n_residual_layers, 64),
            ("seanet.kernel_size", s.kernel_size, 1024),
            ("seanet.residual_kernel_size", s.residual_kernel_size, 1024),
            ("seanet.last_kernel_size", s.last_kernel_size, 1024),
            ("seanet.dilation_base", s.dilation_base, 16),
            ("transformer.num_layers", t.num_layers, 1024),
            ("transformer.dim_feedforward", t.dim_feedforward, 1 << 20),
            ("transformer.context", t.context, 1 << 20),
            ("quantizer.n_q", q.n_q, 1024),
            ("quantizer.bins", q.bins, 1 << 20),
            ("quantizer.dimension", q.dimension, 1 << 16),
        ] {
            if v > max {
                return Err(MimiError::Config(format!("{key} {v} is over {max}")));
            }
        }
        if !(self.frame_rate >= 1.0 && self.frame_rate <= 1000.0) {
            return Err(MimiError::Config(format!(
                "frame_rate {} must be in 1..=1000",
                self.frame_rate
            )));
        }
        if !(t.max_period.is_finite() && t.max_period > 1.0) {
            return Err(MimiError::Config(format!(
                "transformer.max_period {} must be a finite number above 1",
                t.max_period
            )));
        }
        Ok(())
    }
}
