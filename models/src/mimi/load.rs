//! The checkpoint's tensor names and shapes, and a validating, memory-mapped loader.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use super::config::MimiConfig;
use super::MimiError;

/// Every tensor of a Mimi checkpoint in the released file's names, with its shape, in a stable
/// order. For [`MimiConfig::v0_1`] this is the 318 tensors of
/// `tokenizer-e351c8d8-checkpoint125.safetensors`.
pub fn expected_tensors(cfg: &MimiConfig) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let s = &cfg.seanet;
    let nf = s.n_filters;
    type Out = Vec<(String, Vec<usize>)>;
    fn conv(out: &mut Out, p: String, o: usize, i: usize, k: usize) {
        out.push((format!("{p}.conv.conv.weight"), vec![o, i, k]));
        out.push((format!("{p}.conv.conv.bias"), vec![o]));
    }
    let resblock = |out: &mut Out, p: String, dim: usize| {
        let hidden = dim / s.compress;
        conv(
            out,
            format!("{p}.block.1"),
            hidden,
            dim,
            s.residual_kernel_size,
        );
        conv(out, format!("{p}.block.3"), dim, hidden, 1);
    };

    // Encoder: conv, then per ratio (reversed): residual blocks, ELU, strided conv.
    conv(
        &mut out,
        "encoder.model.0".into(),
        nf,
        s.channels,
        s.kernel_size,
    );
    let mut idx = 1;
    let mut mult = 1;
    for &r in s.ratios.iter().rev() {
        for _ in 0..s.n_residual_layers {
            resblock(&mut out, format!("encoder.model.{idx}"), mult * nf);
            idx += 1;
        }
        idx += 1; // ELU
        conv(
            &mut out,
            format!("encoder.model.{idx}"),
            mult * nf * 2,
            mult * nf,
            2 * r,
        );
        idx += 1;
        mult *= 2;
    }
    idx += 1; // ELU
    conv(
        &mut out,
        format!("encoder.model.{idx}"),
        s.dimension,
        mult * nf,
        s.last_kernel_size,
    );

    // Decoder: conv, then per ratio: ELU, transposed conv, residual blocks; ELU, conv.
    let mut mult = 1usize << s.ratios.len();
    conv(
        &mut out,
        "decoder.model.0".into(),
        mult * nf,
        s.dimension,
        s.kernel_size,
    );
    let mut idx = 1;
    for &r in &s.ratios {
        idx += 1; // ELU
        let p = format!("decoder.model.{idx}.convtr.convtr");
        out.push((format!("{p}.weight"), vec![mult * nf, mult * nf / 2, 2 * r]));
        out.push((format!("{p}.bias"), vec![mult * nf / 2]));
        idx += 1;
        for _ in 0..s.n_residual_layers {
            resblock(&mut out, format!("decoder.model.{idx}"), mult * nf / 2);
            idx += 1;
        }
        mult /= 2;
    }
    idx += 1; // ELU
    conv(
        &mut out,
        format!("decoder.model.{idx}"),
        s.channels,
        nf,
        s.last_kernel_size,
    );

    let t = &cfg.transformer;
    for side in ["encoder_transformer", "decoder_transformer"] {
        for l in 0..t.num_layers {
            let p = format!("{side}.transformer.layers.{l}");
            let d = t.d_model;
            out.push((format!("{p}.self_attn.in_proj_weight"), vec![3 * d, d]));
            out.push((format!("{p}.self_attn.out_proj.weight"), vec![d, d]));
            for n in ["norm1", "norm2"] {
                out.push((format!("{p}.{n}.weight"), vec![d]));
                out.push((format!("{p}.{n}.bias"), vec![d]));
            }
            out.push((format!("{p}.linear1.weight"), vec![t.dim_feedforward, d]));
            out.push((format!("{p}.linear2.weight"), vec![d, t.dim_feedforward]));
            out.push((format!("{p}.layer_scale_1.scale"), vec![d]));
            out.push((format!("{p}.layer_scale_2.scale"), vec![d]));
        }
    }

    let q = &cfg.quantizer;
    for (group, levels) in [("rvq_first", 1), ("rvq_rest", q.n_q - 1)] {
        let p = format!("quantizer.{group}");
        out.push((
            format!("{p}.input_proj.weight"),
            vec![q.dimension, s.dimension, 1],
        ));
        out.push((
            format!("{p}.output_proj.weight"),
            vec![s.dimension, q.dimension, 1],
        ));
        for l in 0..levels {
            let c = format!("{p}.vq.layers.{l}._codebook");
            out.push((format!("{c}._initialized"), vec![1]));
            out.push((format!("{c}.cluster_usage"), vec![q.bins]));
            out.push((format!("{c}.embedding_sum"), vec![q.bins, q.dimension]));
        }
    }
    let st = cfg.downsample_stride();
    let d = s.dimension;
    out.push((
        "downsample.conv.conv.conv.weight".into(),
        vec![d, d, 2 * st],
    ));
    out.push((
        "upsample.convtr.convtr.convtr.weight".into(),
        vec![d, 1, 2 * st],
    ));
    out
}

/// A validated, memory-mapped checkpoint.
pub(crate) struct Weights {
    st: MmapedSafetensors,
    path: PathBuf,
    device: Device,
}

impl Weights {
    /// Maps `path` and checks it holds exactly the tensors of `cfg` (names and shapes).
    pub(crate) fn open(path: &Path, cfg: &MimiConfig, device: &Device) -> Result<Self, MimiError> {
        let pb = path.to_path_buf();
        let meta = std::fs::metadata(path).map_err(|e| MimiError::Io {
            path: pb.clone(),
            error: e,
        })?;
        if !meta.is_file() {
            return Err(MimiError::Checkpoint {
                path: pb,
                msg: "is not a regular file".into(),
            });
        }
        // SAFETY: the file is mapped read-only; moshid never writes checkpoints it is reading.
        // Another process truncating it underneath would be a misuse we cannot guard against.
        let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| MimiError::Checkpoint {
            path: pb.clone(),
            msg: format!("not a readable safetensors file ({e}); re-download it"),
        })?;
        let present: HashMap<String, Vec<usize>> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| (n, v.shape().to_vec()))
            .collect();
        let expected = expected_tensors(cfg);
        for (name, shape) in &expected {
            match present.get(name) {
                None => {
                    return Err(MimiError::MissingTensor {
                        path: pb,
                        name: name.clone(),
                        expected: shape.clone(),
                    })
                }
                Some(found) if found != shape => {
                    return Err(MimiError::WrongShape {
                        path: pb,
                        name: name.clone(),
                        expected: shape.clone(),
                        found: found.clone(),
                    })
                }
                Some(_) => {}
            }
        }
        if present.len() != expected.len() {
            let known: std::collections::HashSet<&str> =
                expected.iter().map(|(n, _)| n.as_str()).collect();
            let mut extra: Vec<&String> = present
                .keys()
                .filter(|n| !known.contains(n.as_str()))
                .collect();
            extra.sort();
            if let Some(name) = extra.first() {
                return Err(MimiError::UnexpectedTensor {
                    path: pb,
                    name: (*name).clone(),
                });
            }
        }
        Ok(Self {
            st,
            path: pb,
            device: device.clone(),
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.device
    }

    /// Loads one (already validated) tensor as f32 on the target device.
    pub(crate) fn get(&self, name: &str) -> Result<Tensor, MimiError> {
        let t = self
            .st
            .load(name, &self.device)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| MimiError::Checkpoint {
                path: self.path.clone(),
                msg: format!(
                    "cannot read tensor `{name}` ({e}); the file may be truncated or corrupt"
                ),
            })?;
        Ok(t)
    }
}
