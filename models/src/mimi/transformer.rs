//! Mimi's causal transformer: pre-norm layers (LayerNorm), RoPE (interleaved pairs), layer
//! scale, GELU feed-forward, a limited attention context and a streaming KV cache.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::LayerNorm;

use super::config::TransformerConfig;
use super::kernels::Packed;
use super::load::Vars;
use super::MimiError;

#[derive(Debug, Clone)]
struct Layer {
    /// `[d, 3d]` (PyTorch `in_proj_weight` transposed, q/k/v stacked).
    in_proj: Packed,
    out_proj: Packed,
    norm1: LayerNorm,
    norm2: LayerNorm,
    linear1: Packed,
    linear2: Packed,
    scale1: Tensor,
    scale2: Tensor,
    /// Past keys/values `[H, L, Dh]`, at most `context` steps.
    k_cache: Option<Tensor>,
    v_cache: Option<Tensor>,
}

/// A stack of layers with its streaming position.
#[derive(Debug, Clone)]
pub(crate) struct Transformer {
    layers: Vec<Layer>,
    num_heads: usize,
    head_dim: usize,
    context: usize,
    /// Steps per code frame: the reference's ring cache is filled `granularity` steps at a
    /// time, which decides which old keys a query can still see.
    granularity: usize,
    inv_freq: Vec<f32>,
    /// Position of the next step.
    pos: usize,
    device: Device,
}

impl Transformer {
    /// The transformer under `v` (`encoder_transformer` / `decoder_transformer`).
    pub(crate) fn load(
        v: &Vars,
        cfg: &TransformerConfig,
        granularity: usize,
    ) -> std::result::Result<Self, MimiError> {
        let (d, ff) = (cfg.d_model, cfg.dim_feedforward);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = v.pp(format!("transformer.layers.{l}"));
            // Linear weights are kept transposed, `[in, out]`, for the small-batch kernels.
            let wt = |n: &str, shape: &[usize]| -> std::result::Result<Packed, MimiError> {
                Ok(Packed::new(&p.get(n, shape)?.t()?, granularity)?)
            };
            let norm = |n: &str| -> std::result::Result<LayerNorm, MimiError> {
                let p = p.pp(n);
                Ok(LayerNorm::new(
                    p.get("weight", &[d])?,
                    p.get("bias", &[d])?,
                    1e-5,
                ))
            };
            layers.push(Layer {
                in_proj: wt("self_attn.in_proj_weight", &[3 * d, d])?,
                out_proj: wt("self_attn.out_proj.weight", &[d, d])?,
                norm1: norm("norm1")?,
                norm2: norm("norm2")?,
                linear1: wt("linear1.weight", &[ff, d])?,
                linear2: wt("linear2.weight", &[d, ff])?,
                scale1: p.get("layer_scale_1.scale", &[d])?,
                scale2: p.get("layer_scale_2.scale", &[d])?,
                k_cache: None,
                v_cache: None,
            });
        }
        let head_dim = cfg.d_model / cfg.num_heads;
        // Same arithmetic as the reference: exp(i * (-ln(max_period) * 2 / D)) in f32.
        let step = (-(cfg.max_period.ln()) * 2.0 / head_dim as f64) as f32;
        let inv_freq = (0..head_dim / 2).map(|i| (i as f32 * step).exp()).collect();
        Ok(Self {
            layers,
            num_heads: cfg.num_heads,
            head_dim,
            context: cfg.context,
            granularity: granularity.max(1),
            inv_freq,
            pos: 0,
            device: v.device(),
        })
    }

    pub(crate) fn reset(&mut self) {
        self.pos = 0;
        for l in &mut self.layers {
            l.k_cache = None;
            l.v_cache = None;
        }
    }

    /// Several streams of one model at once: `x` is `[B * T, d]`, rows `b * T..(b + 1) * T`
    /// continuing `trs[b]`'s stream. The projections and feed-forward run over all rows in
    /// one product (one read of the weights); attention runs per stream, over its own cache
    /// at its own positions. Returns `[B * T, d]`.
    pub(crate) fn step_batch(trs: &mut [&mut Transformer], x: &Tensor) -> Result<Tensor> {
        let Some(first) = trs.first() else {
            candle_core::bail!("a batched transformer step needs at least one stream")
        };
        let depth = first.layers.len();
        let t = x.dim(0)? / trs.len();
        if t * trs.len() != x.dim(0)? || trs.iter().any(|tr| tr.layers.len() != depth) {
            candle_core::bail!("a batched transformer step over mismatched streams");
        }
        let ropes = trs
            .iter()
            .map(|tr| tr.rope(t))
            .collect::<Result<Vec<_>>>()?;
        let mut x = x.clone();
        for li in 0..depth {
            x = layer_step_batch(trs, li, &x, &ropes)?;
        }
        for tr in trs.iter_mut() {
            tr.pos += t;
        }
        Ok(x)
    }

    /// RoPE's cosines and sines `[T, Dh / 2]` for the next `t` positions of this stream.
    fn rope(&self, t: usize) -> Result<(Tensor, Tensor)> {
        let half = self.head_dim / 2;
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        for i in 0..t {
            let p = (self.pos + i) as f32;
            for f in &self.inv_freq {
                let a = f * p;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), &self.device)?,
            Tensor::from_vec(sin, (t, half), &self.device)?,
        ))
    }

    /// Self-attention of layer `li` for this stream: `qkv` is `[T, 3, H, Dh]` of its rows;
    /// returns `[T, d]` (before the output projection) and updates its key/value cache.
    fn attend(&mut self, li: usize, qkv: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Result<Tensor> {
        let (t, _, h, dh) = qkv.dims4()?;
        let (pos, context, g) = (self.pos, self.context, self.granularity);
        let layer = &mut self.layers[li];
        let qkv = qkv.permute((1, 2, 0, 3))?; // [3, H, T, Dh]
        let q = qkv.get(0)?.unsqueeze(0)?.contiguous()?;
        let k = qkv.get(1)?.unsqueeze(0)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        // RoPE in f32 at every dtype, as the LM's (phases of late positions need it).
        let dt = qkv.dtype();
        let rope = |t: &Tensor| -> Result<Tensor> {
            candle_nn::rotary_emb::rope_i(&t.to_dtype(DType::F32)?, cos, sin)?
                .to_dtype(dt)?
                .squeeze(0)
        };
        let (q, k) = (rope(&q)?, rope(&k)?);

        let (k_all, v_all) = match (&layer.k_cache, &layer.v_cache) {
            (Some(kc), Some(vc)) => (Tensor::cat(&[kc, &k], 1)?, Tensor::cat(&[vc, &v], 1)?),
            _ => (k, v),
        };
        let n_keys = k_all.dim(1)?;
        let first_key = pos + t - n_keys;
        // A key is visible when it is causal, inside the context, and still in the
        // reference's ring cache when the query's frame is processed.
        let mut mask = Vec::with_capacity(t * n_keys);
        for i in 0..t {
            let qp = pos + i;
            let frame_end = (qp / g + 1) * g;
            let oldest = frame_end.saturating_sub(context);
            for j in 0..n_keys {
                let kp = first_key + j;
                let ok = kp <= qp && qp - kp < context && kp >= oldest;
                mask.push(if ok { 0f32 } else { f32::NEG_INFINITY });
            }
        }
        let mask = Tensor::from_vec(mask, (1, t, n_keys), qkv.device())?;
        let scale = 1.0 / (dh as f64).sqrt();
        // Scores and softmax in f32 at every dtype (a no-op in f32).
        let att = (q.matmul(&k_all.t()?)?.to_dtype(DType::F32)? * scale)?.broadcast_add(&mask)?;
        let att = candle_nn::ops::softmax_last_dim(&att)?.to_dtype(dt)?;
        let y = att.matmul(&v_all)?; // [H, T, Dh]

        // Views, not copies: the next step's `cat` copies them anyway.
        let keep = n_keys.min(context);
        layer.k_cache = Some(k_all.narrow(1, n_keys - keep, keep)?);
        layer.v_cache = Some(v_all.narrow(1, n_keys - keep, keep)?);
        y.transpose(0, 1)?.reshape((t, h * dh))
    }
}

/// Layer `li` of every stream: `x` is `[B * T, d]`, stream by stream.
fn layer_step_batch(
    trs: &mut [&mut Transformer],
    li: usize,
    x: &Tensor,
    ropes: &[(Tensor, Tensor)],
) -> Result<Tensor> {
    let (rows, _) = x.dims2()?;
    let batch = trs.len();
    let (h, dh) = (trs[0].num_heads, trs[0].head_dim);
    let t = rows / batch;
    let qkv = {
        let w = &trs[0].layers[li];
        w.in_proj.mm(&w.norm1.forward(x)?)? // [B * T, 3d]
    };
    let qkv = qkv.reshape((batch, t, 3, h, dh))?;
    let ys = trs
        .iter_mut()
        .zip(ropes)
        .enumerate()
        .map(|(b, (tr, rope))| tr.attend(li, &qkv.get(b)?, rope))
        .collect::<Result<Vec<_>>>()?;
    let w = &trs[0].layers[li];
    let y = w.out_proj.mm(&Tensor::cat(&ys, 0)?)?;
    let x = (x + y.broadcast_mul(&w.scale1)?)?;
    let ff = w.linear1.mm(&w.norm2.forward(&x)?)?.gelu_erf()?;
    let ff = w.linear2.mm(&ff)?;
    x + ff.broadcast_mul(&w.scale2)?
}
