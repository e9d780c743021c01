//! The LM's weights and its two transformers, run one step at a time.

use std::path::Path;

use candle_core::{DType, Device, Storage, Tensor, D};

use super::weights::{AnyLinear as Linear, Embedding, Layout, Store};
use super::{LmConfig, LmError};
use crate::device::DeviceKind;

fn ce(e: candle_core::Error) -> LmError {
    LmError::Candle(e.to_string())
}

/// One pre-norm transformer layer: RMSNorm -> attention -> residual, RMSNorm -> SiLU-gated
/// FFN -> residual, no biases.
#[derive(Debug, Clone)]
struct Layer {
    norm1: Tensor,
    norm2: Tensor,
    in_proj: Linear,
    out_proj: Linear,
    ff_in: Linear,
    ff_out: Linear,
}

/// The weights of one depth-transformer step (codebook `k`).
#[derive(Debug, Clone)]
struct DepStep {
    linear_in: Linear,
    emb: Embedding,
    layers: Vec<Layer>,
    linear_out: Linear,
}

/// Moshi's LM weights: the temporal transformer, the depth transformer and the heads.
#[derive(Debug, Clone)]
pub struct LmModel {
    pub(crate) cfg: LmConfig,
    emb: Vec<Embedding>,
    text_emb: Embedding,
    layers: Vec<Layer>,
    out_norm: Tensor,
    text_linear: Linear,
    dep: Vec<DepStep>,
    dtype: DType,
    device: Device,
    weight_bytes: u64,
    layout: Layout,
    quantized: bool,
}

/// A fixed-capacity ring of keys and values for one attention layer.
#[derive(Debug)]
pub(crate) struct RingKv {
    k: Tensor,
    v: Tensor,
    cap: usize,
    len: usize,
    next: usize,
}

/// A zeroed f32 CPU tensor whose memory is advised as huge pages and then written, page by
/// page, now. A ring is laid out head by head, so a conversation's first step writes a row in
/// every head's stretch and would otherwise fault in its whole cache at once (3.15 GB, about
/// 0.3-1 s, for the 7B at context 3000) inside a step that other conversations share. Writing
/// it here moves that cost to the slot's creation, at load; the memory planner counts the
/// full cache per conversation already.
fn touched_zeros(shape: (usize, usize, usize, usize)) -> Result<Tensor, LmError> {
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let mut xs: Vec<f32> = Vec::new();
    xs.try_reserve_exact(n).map_err(|e| {
        LmError::Candle(format!(
            "cannot allocate a key/value cache of {n} floats ({e}): use a smaller context"
        ))
    })?;
    // A large allocation is a fresh mapping: advised before its first touch, its pages come
    // as 2 MiB pages (a full window is read every step, as the weights are).
    super::cpu::advise(xs.as_ptr() as *const u8, n * std::mem::size_of::<f32>());
    xs.resize(n, 0.0);
    Tensor::from_vec(xs, shape, &Device::Cpu).map_err(ce)
}

impl RingKv {
    pub(crate) fn new(
        heads: usize,
        cap: usize,
        head_dim: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, LmError> {
        let shape = (1, heads, cap, head_dim);
        let (k, v) = if dtype == DType::F32 && device.is_cpu() {
            (touched_zeros(shape)?, touched_zeros(shape)?)
        } else {
            (
                Tensor::zeros(shape, dtype, device).map_err(ce)?,
                Tensor::zeros(shape, dtype, device).map_err(ce)?,
            )
        };
        Ok(Self {
            k,
            v,
            cap,
            len: 0,
            next: 0,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.len = 0;
        self.next = 0;
    }

    /// [`RingKv::push_raw`], returning the valid keys/values as tensors.
    fn push(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let cap = self.cap;
        let (ks, vs, len) = self.push_raw(k, v)?;
        if len == cap {
            Ok((ks.clone(), vs.clone()))
        } else {
            Ok((ks.narrow(2, 0, len)?, vs.narrow(2, 0, len)?))
        }
    }

    /// Marks the ring full with small non-zero keys/values written to every entry (untouched
    /// zero pages would all map one physical page and read from cache, unrealistically).
    pub(crate) fn fill_for_bench(&mut self) -> candle_core::Result<()> {
        // In place, so that the ring keeps its memory (and its huge pages).
        let full =
            Tensor::full(0.01f32, self.k.shape(), self.k.device())?.to_dtype(self.k.dtype())?;
        self.k.slice_set(&full, 2, 0)?;
        self.v.slice_set(&full, 2, 0)?;
        self.len = self.cap;
        Ok(())
    }

    /// Stores one step's `[1, H, 1, D]` key and value, overwriting the oldest when full, and
    /// returns the whole ring with the number of valid rows (the first `len` of each head).
    /// Order inside the ring does not matter: positions are already in the keys (RoPE), and
    /// attention is a set operation over them.
    fn push_raw(
        &mut self,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(&Tensor, &Tensor, usize)> {
        self.k.slice_set(k, 2, self.next)?;
        self.v.slice_set(v, 2, self.next)?;
        self.next = (self.next + 1) % self.cap;
        self.len = (self.len + 1).min(self.cap);
        Ok((&self.k, &self.v, self.len))
    }

    fn bytes(&self) -> u64 {
        2 * (self.k.elem_count() * self.k.dtype().size_in_bytes()) as u64
    }

    /// A copy of the entries written so far, with its own memory (a `Tensor` clone would
    /// share the buffers the ring writes in place). A prompt fills a few hundred of the 3000
    /// entries: only those are kept.
    pub(crate) fn snapshot(&self) -> candle_core::Result<KvSnapshot> {
        let (k, v) = if self.len < self.cap {
            // Not wrapped yet: the entries are the first `len` (and `next == len`).
            let k = self.k.narrow(2, 0, self.len)?.contiguous()?.copy()?;
            (k, self.v.narrow(2, 0, self.len)?.contiguous()?.copy()?)
        } else {
            (self.k.copy()?, self.v.copy()?)
        };
        Ok(KvSnapshot {
            k,
            v,
            len: self.len,
            next: self.next,
        })
    }

    /// Takes a snapshot's entries and position into this ring's memory.
    pub(crate) fn restore(&mut self, s: &KvSnapshot) -> candle_core::Result<()> {
        let (_, h, rows, d) = s.k.dims4()?;
        let (_, mh, cap, md) = self.k.dims4()?;
        if (h, d) != (mh, md) || rows > cap || s.len > cap {
            candle_core::bail!(
                "a KV snapshot of {rows} x {h} x {d} does not fit a ring of {cap} x {mh} x {md}"
            );
        }
        if rows > 0 {
            self.k.slice_set(&s.k.to_dtype(self.k.dtype())?, 2, 0)?;
            self.v.slice_set(&s.v.to_dtype(self.v.dtype())?, 2, 0)?;
        }
        self.len = s.len;
        self.next = s.next % cap;
        Ok(())
    }
}

/// The written entries of a [`RingKv`], kept apart from it (a prompted persona's state).
#[derive(Debug)]
pub(crate) struct KvSnapshot {
    k: Tensor,
    v: Tensor,
    len: usize,
    next: usize,
}

impl KvSnapshot {
    pub(crate) fn bytes(&self) -> u64 {
        2 * (self.k.elem_count() * self.k.dtype().size_in_bytes()) as u64
    }

    /// Its tensors under `prefix` (`k`, `v`, `pos` = [len, next]) for a file.
    pub(crate) fn to_tensors(
        &self,
        prefix: &str,
        out: &mut std::collections::HashMap<String, Tensor>,
    ) -> candle_core::Result<()> {
        let pos = Tensor::new(&[self.len as i64, self.next as i64], &Device::Cpu)?;
        out.insert(format!("{prefix}k"), self.k.to_device(&Device::Cpu)?);
        out.insert(format!("{prefix}v"), self.v.to_device(&Device::Cpu)?);
        out.insert(format!("{prefix}pos"), pos);
        Ok(())
    }

    /// Reads what [`KvSnapshot::to_tensors`] wrote, onto `device`.
    pub(crate) fn from_tensors(
        prefix: &str,
        t: &std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let get = |n: &str| {
            t.get(&format!("{prefix}{n}"))
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {prefix}{n}")))
        };
        let pos = get("pos")?.to_vec1::<i64>()?;
        let (k, v) = (get("k")?.to_device(device)?, get("v")?.to_device(device)?);
        if pos.len() != 2 || pos.iter().any(|&p| p < 0) || k.shape() != v.shape() || k.rank() != 4 {
            candle_core::bail!("{prefix}: not a KV snapshot");
        }
        Ok(Self {
            k,
            v,
            len: pos[0] as usize,
            next: pos[1] as usize,
        })
    }
}

/// What loading a model and its KV cache will take, from the file headers alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights as held for compute.
    pub weights_bytes: u64,
    /// Temporal KV cache for the chosen context (keys + values, all layers).
    pub kv_cache_bytes: u64,
}

impl MemoryEstimate {
    /// Total bytes.
    pub fn total(&self) -> u64 {
        self.weights_bytes.saturating_add(self.kv_cache_bytes)
    }

    /// KV cache bytes for `context` steps at `dtype`; `u64::MAX` when that does not fit in
    /// 64 bits (an absurd context never wraps around to a small number).
    pub fn kv_bytes(cfg: &LmConfig, context: usize, dtype: DType) -> u64 {
        [cfg.num_layers, context, cfg.dim, dtype.size_in_bytes()]
            .iter()
            .try_fold(2u64, |a, &b| a.checked_mul(b as u64))
            .unwrap_or(u64::MAX)
    }

    /// [`MemoryEstimate::kv_bytes`], refusing a context whose cache size overflows.
    pub(crate) fn checked_kv_bytes(
        cfg: &LmConfig,
        context: usize,
        dtype: DType,
    ) -> Result<u64, LmError> {
        if context == 0 {
            return Err(LmError::Config("context must be at least 1 step".into()));
        }
        match Self::kv_bytes(cfg, context, dtype) {
            u64::MAX => Err(LmError::Config(format!(
                "context {context} steps: its KV cache would not even fit in 64-bit memory; use a context of a few thousand steps"
            ))),
            b => Ok(b),
        }
    }

    /// Bytes the model takes on a device of `kind`: weights and KV cache, plus, on CUDA, an
    /// allowance for the runtime itself ([`CUDA_RUNTIME_BYTES`]).
    pub fn needed_on(&self, kind: DeviceKind) -> u64 {
        match kind {
            DeviceKind::Cpu => self.total(),
            DeviceKind::Cuda { .. } => self.total() + CUDA_RUNTIME_BYTES,
        }
    }

    /// Refuses a configuration that cannot fit in the memory `device` has free: the host's
    /// MemAvailable on the CPU and on a GPU that shares it (Jetson: the GPU allocates from
    /// the same RAM), the GPU's free memory on a discrete one.
    pub fn check_fits(&self, device: &Device, context: usize) -> Result<(), LmError> {
        self.check_against(
            DeviceKind::of(device),
            crate::device::free_memory(device).map(|f| f.bytes),
            context,
        )
    }

    /// [`MemoryEstimate::check_fits`] against a known `available` (`None`: not checked).
    pub fn check_against(
        &self,
        kind: DeviceKind,
        available: Option<u64>,
        context: usize,
    ) -> Result<(), LmError> {
        let Some(avail) = available else {
            return Ok(());
        };
        let needed = self.needed_on(kind);
        if needed <= avail {
            return Ok(());
        }
        let runtime = match kind {
            DeviceKind::Cpu => String::new(),
            DeviceKind::Cuda { integrated, .. } => format!(
                " + CUDA runtime {:.2} GB, on a GPU {}",
                gb(CUDA_RUNTIME_BYTES),
                if integrated {
                    "that shares the host's RAM"
                } else {
                    "with its own memory"
                }
            ),
        };
        Err(LmError::WontFit {
            needed,
            available: avail,
            hint: format!(
                "weights {:.2} GB + KV cache {:.2} GB for context {context}{runtime}: use a smaller --context, a q8_0/q4 GGUF (moshid quantize), or free memory",
                gb(self.weights_bytes),
                gb(self.kv_cache_bytes)
            ),
        })
    }
}

/// What the CUDA runtime takes beside the model's tensors (context, kernels, cuBLAS
/// workspace): an allowance, not a measurement (Jetson boards report 0.3-0.6 GB).
pub const CUDA_RUNTIME_BYTES: u64 = 600_000_000;

fn gb(b: u64) -> f64 {
    b as f64 / 1e9
}

/// MemAvailable from /proc/meminfo, in bytes.
pub(crate) fn mem_available() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Estimates memory for `path` with `cfg` at `dtype` and `context`, reading headers only.
pub fn estimate_memory(
    path: &Path,
    cfg: &LmConfig,
    dtype: DType,
    context: usize,
) -> Result<MemoryEstimate, LmError> {
    let weights_bytes = super::weights::stored_weight_bytes(path, dtype)?;
    Ok(MemoryEstimate {
        weights_bytes,
        kv_cache_bytes: MemoryEstimate::checked_kv_bytes(cfg, context, dtype)?,
    })
}

/// Default compute dtype for a device: f32 on CPU; on CUDA bf16 where the GPU has it
/// (compute capability >= 8.0), else f16 ([`crate::device::DeviceKind::lm_dtype`]).
pub fn default_dtype(device: &Device) -> DType {
    crate::device::DeviceKind::of(device)
        .lm_dtype(None)
        .unwrap_or(DType::F16)
}

/// A transformer layer under `p` (`....layers.{l}.`) of width `d` and gated hidden `hidden`.
fn load_layer(st: &mut Store, p: &str, d: usize, hidden: usize) -> Result<Layer, LmError> {
    Ok(Layer {
        norm1: st.norm(&format!("{p}norm1.alpha"), d)?,
        norm2: st.norm(&format!("{p}norm2.alpha"), d)?,
        in_proj: st.linear(&format!("{p}self_attn.in_proj_weight"), 3 * d, d)?,
        out_proj: st.linear(&format!("{p}self_attn.out_proj.weight"), d, d)?,
        ff_in: st.linear(&format!("{p}gating.linear_in.weight"), 2 * hidden, d)?,
        ff_out: st.linear(&format!("{p}gating.linear_out.weight"), d, hidden)?,
    })
}

/// Rows of the depth step `k`'s embedding: the text vocabulary for step 0, audio after.
fn dep_emb_rows(cfg: &LmConfig, k: usize) -> usize {
    if k == 0 {
        cfg.text_card + 1
    } else {
        cfg.card + 1
    }
}

/// The depth transformer in the candle layout: one module per step.
fn dep_candle(st: &mut Store, cfg: &LmConfig) -> Result<Vec<DepStep>, LmError> {
    let (d, dd, dh) = (cfg.dim, cfg.depformer_dim, cfg.depformer_hidden());
    let mut dep = Vec::with_capacity(cfg.dep_q);
    for k in 0..cfg.dep_q {
        let p = format!("depformer.{k}.");
        let linear_in = st.linear(&format!("{p}linear_in.weight"), dd, d)?;
        let emb = st.embedding(&format!("{p}emb.weight"), dep_emb_rows(cfg, k), dd)?;
        let linear_out = st.linear(&format!("{p}linear_out.weight"), cfg.card, dd)?;
        let layers = (0..cfg.depformer_num_layers)
            .map(|l| load_layer(st, &format!("{p}transformer.layers.{l}."), dd, dh))
            .collect::<Result<_, _>>()?;
        dep.push(DepStep {
            linear_in,
            emb,
            layers,
            linear_out,
        });
    }
    Ok(dep)
}

/// The depth transformer in the PyTorch layout: per-step projections stored concatenated,
/// norms shared by the steps.
fn dep_pytorch(st: &mut Store, cfg: &LmConfig) -> Result<Vec<DepStep>, LmError> {
    let (d, dd, dh, q) = (
        cfg.dim,
        cfg.depformer_dim,
        cfg.depformer_hidden(),
        cfg.dep_q,
    );
    let mut ins_outs = Vec::with_capacity(q);
    for k in 0..q {
        let i = st.linear(&format!("depformer_in.{k}.weight"), dd, d)?;
        ins_outs.push((i, st.linear(&format!("linears.{k}.weight"), cfg.card, dd)?));
    }
    let mut embs = vec![st.embedding("depformer_text_emb.weight", cfg.text_card + 1, dd)?];
    for k in 1..q {
        let name = format!("depformer_emb.{}.weight", k - 1);
        embs.push(st.embedding(&name, cfg.card + 1, dd)?);
    }
    let mut layers: Vec<Vec<Layer>> = (0..q).map(|_| Vec::new()).collect();
    for l in 0..cfg.depformer_num_layers {
        let p = format!("depformer.layers.{l}.");
        let norm1 = st.norm(&format!("{p}norm1.alpha"), dd)?;
        let norm2 = st.norm(&format!("{p}norm2.alpha"), dd)?;
        let ins = st.linear_steps(&format!("{p}self_attn.in_proj_weight"), q, 3 * dd, dd)?;
        let outs = st.linear_steps(&format!("{p}self_attn.out_proj.weight"), q, dd, dd)?;
        for (k, (in_proj, out_proj)) in ins.into_iter().zip(outs).enumerate() {
            let g = format!("{p}gating.{k}.");
            layers[k].push(Layer {
                norm1: norm1.clone(),
                norm2: norm2.clone(),
                in_proj,
                out_proj,
                ff_in: st.linear(&format!("{g}linear_in.weight"), 2 * dh, dd)?,
                ff_out: st.linear(&format!("{g}linear_out.weight"), dd, dh)?,
            });
        }
    }
    let steps = ins_outs.into_iter().zip(embs).zip(layers);
    Ok(steps
        .map(|(((linear_in, linear_out), emb), layers)| DepStep {
            linear_in,
            emb,
            layers,
            linear_out,
        })
        .collect())
}

impl LmModel {
    /// Loads weights from safetensors (PyTorch or candle layout, detected by key names) or
    /// GGUF. `dtype` defaults to [`default_dtype`] for the device (bf16 on a GPU without it
    /// is refused). Every tensor must be present with its shape and finite values, and the
    /// file must hold nothing else.
    pub fn load(
        path: &Path,
        cfg: &LmConfig,
        dtype: Option<DType>,
        device: &Device,
    ) -> Result<Self, LmError> {
        cfg.validate()?;
        let dtype = DeviceKind::of(device)
            .lm_dtype(dtype)
            .map_err(|e| LmError::Config(e.to_string()))?;
        let mut st = Store::open(path, dtype, device)?;
        let model = Self::build(&mut st, cfg)?;
        st.finish()?;
        Ok(model)
    }

    /// Builds the model from `st`, asking for every tensor of a `cfg` checkpoint in the
    /// store's layout (in the order [`super::checkpoint_tensors`] reports).
    pub(crate) fn build(st: &mut Store, cfg: &LmConfig) -> Result<Self, LmError> {
        let d = cfg.dim;
        let emb = (0..cfg.n_q)
            .map(|i| st.embedding(&format!("emb.{i}.weight"), cfg.card + 1, d))
            .collect::<Result<_, _>>()?;
        let text_emb = st.embedding("text_emb.weight", cfg.text_card + 1, d)?;
        let text_linear = st.linear("text_linear.weight", cfg.text_card, d)?;
        let out_norm = st.norm("out_norm.alpha", d)?;
        let layers = (0..cfg.num_layers)
            .map(|l| load_layer(st, &format!("transformer.layers.{l}."), d, cfg.hidden()))
            .collect::<Result<_, _>>()?;
        let dep = match st.layout {
            Layout::Candle => dep_candle(st, cfg)?,
            Layout::PyTorch => dep_pytorch(st, cfg)?,
        };
        Ok(Self {
            cfg: cfg.clone(),
            emb,
            text_emb,
            layers,
            out_norm,
            text_linear,
            dep,
            dtype: st.dtype,
            device: st.device.clone(),
            weight_bytes: st.bytes,
            layout: st.layout,
            quantized: st.quantized,
        })
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Bytes of weights held in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Which naming layout the checkpoint used.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether the weights came from GGUF (quantized linear layers).
    pub fn is_gguf(&self) -> bool {
        self.quantized
    }

    pub(crate) fn new_caches(&self, context: usize) -> Result<(Vec<RingKv>, Vec<RingKv>), LmError> {
        let c = &self.cfg;
        let hd = c.dim / c.num_heads;
        let main = (0..c.num_layers)
            .map(|_| RingKv::new(c.num_heads, context, hd, self.dtype, &self.device))
            .collect::<Result<Vec<_>, _>>()?;
        let dhd = c.depformer_dim / c.depformer_num_heads;
        let dep = (0..c.depformer_num_layers)
            .map(|_| {
                RingKv::new(
                    c.depformer_num_heads,
                    c.dep_q,
                    dhd,
                    self.dtype,
                    &self.device,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((main, dep))
    }

    pub(crate) fn cache_bytes(caches: &[RingKv]) -> u64 {
        caches.iter().map(RingKv::bytes).sum()
    }

    /// Temporal step of `B = tokens.len()` conversations over one read of the weights: row
    /// `b` embeds its 17 input tokens and runs at position `pos[b]` against its own KV
    /// caches `caches[b]` (one per layer). Returns (`transformer_out` [B,1,dim], text logits
    /// [B,1,text_card] in f32). Each row's arithmetic does not depend on the other rows
    /// except through the linear layers' kernels (see `LmBatch` for what that means).
    pub(crate) fn temporal(
        &self,
        tokens: &[&[u32]],
        embeds: &[Option<Vec<f32>>],
        pos: &[usize],
        caches: &mut [&mut [RingKv]],
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dev = &self.device;
        let b = tokens.len();
        let ids = |s: usize| Tensor::from_iter(tokens.iter().map(|t| t[s]), dev)?.reshape((b, 1));
        // Same summation order as the reference: audio streams first, then text.
        let mut x: Option<Tensor> = None;
        for (i, e) in self.emb.iter().enumerate() {
            let y = e.lookup(&ids(1 + i)?)?;
            x = Some(match x {
                None => y,
                Some(x) => (x + y)?,
            });
        }
        let t = self.text_emb.lookup(&ids(0)?)?;
        let mut x = match x {
            Some(x) => (x + t)?,
            None => t,
        };
        if embeds.iter().any(Option::is_some) {
            x = self.replace_embeddings(&x, embeds)?;
        }
        let c = &self.cfg;
        let (cos, sin) = rope_tables(c.dim / c.num_heads, c.max_period, pos, dev)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let rope = Some((&cos, &sin));
            x = layer.forward(&x, c.num_heads, rope, caches, l, c.norm_eps())?;
        }
        let out = rms_norm(&x, &self.out_norm, c.norm_eps())?;
        let logits = self.text_linear.forward(&out)?;
        Ok((out, logits))
    }

    /// `x` ([B,1,dim]) with row `b` replaced by `embeds[b]` where given (a persona preset's
    /// stored input embeddings, which stand for tokens the model never sees).
    fn replace_embeddings(
        &self,
        x: &Tensor,
        embeds: &[Option<Vec<f32>>],
    ) -> candle_core::Result<Tensor> {
        let rows = (0..x.dim(0)?)
            .map(|b| match embeds.get(b) {
                Some(Some(e)) => {
                    Tensor::from_slice(e, (1, 1, e.len()), &self.device)?.to_dtype(x.dtype())
                }
                _ => x.narrow(0, b, 1),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&rows, 0)
    }

    /// Depth step `k` of `B = prev_tokens.len()` conversations: row `b`'s input is its
    /// previous token of this step (the text token for k = 0) and row `b` of
    /// `transformer_out`; returns audio logits [B,1,card].
    pub(crate) fn depth(
        &self,
        k: usize,
        prev_tokens: &[u32],
        transformer_out: &Tensor,
        caches: &mut [&mut [RingKv]],
    ) -> candle_core::Result<Tensor> {
        let s = &self.dep[k];
        let b = prev_tokens.len();
        let id = Tensor::from_slice(prev_tokens, (b, 1), &self.device)?;
        let mut x = (s.linear_in.forward(transformer_out)? + s.emb.lookup(&id)?)?;
        let c = &self.cfg;
        for (l, layer) in s.layers.iter().enumerate() {
            x = layer.forward(&x, c.depformer_num_heads, None, caches, l, c.norm_eps())?;
        }
        s.linear_out.forward(&x)
    }
}

impl Layer {
    /// One step of `B` rows; row `b` attends over `caches[b][l]`.
    fn forward(
        &self,
        x: &Tensor,
        heads: usize,
        rope: Option<(&Tensor, &Tensor)>,
        caches: &mut [&mut [RingKv]],
        l: usize,
        eps: f64,
    ) -> candle_core::Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        if caches.len() != b {
            candle_core::bail!("{b} rows but {} caches", caches.len());
        }
        let hd = d / heads;
        let h = rms_norm(x, &self.norm1, eps)?;
        let qkv = self.in_proj.forward(&h)?.reshape((b, t, 3, heads, hd))?;
        let part = |i| -> candle_core::Result<Tensor> {
            qkv.narrow(2, i, 1)?
                .squeeze(2)?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (part(0)?, part(1)?, part(2)?);
        let (q, k) = match rope {
            Some((cos, sin)) => {
                let dt = q.dtype();
                let q = candle_nn::rotary_emb::rope_i(&q.to_dtype(DType::F32)?, cos, sin)?
                    .to_dtype(dt)?;
                let k = candle_nn::rotary_emb::rope_i(&k.to_dtype(DType::F32)?, cos, sin)?
                    .to_dtype(dt)?;
                (q, k)
            }
            None => (q, k),
        };
        let scale = 1.0 / (hd as f64).sqrt();
        let y = if t == 1 && q.dtype() == DType::F32 && q.device().is_cpu() {
            let mut out = vec![0f32; b * d];
            for (i, (cache, o)) in caches.iter_mut().zip(out.chunks_exact_mut(d)).enumerate() {
                let (kb, vb) = (k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
                attend_cpu(&q, i, &kb, &vb, &mut cache[l], hd, scale as f32, o)?;
            }
            Tensor::from_vec(out, (b, t, d), x.device())?
        } else {
            let mut ys = Vec::with_capacity(b);
            for (i, cache) in caches.iter_mut().enumerate() {
                let (qb, kb, vb) = (q.narrow(0, i, 1)?, k.narrow(0, i, 1)?, v.narrow(0, i, 1)?);
                let (ks, vs) = cache[l].push(&kb, &vb)?;
                let att = (qb.matmul(&ks.t()?)? * scale)?;
                let att = candle_nn::ops::softmax_last_dim(&att.to_dtype(DType::F32)?)?
                    .to_dtype(vs.dtype())?;
                ys.push(att.matmul(&vs)?.transpose(1, 2)?.reshape((1, t, d))?);
            }
            Tensor::cat(&ys, 0)?
        };
        let x = (x + self.out_proj.forward(&y)?)?;
        let h = rms_norm(&x, &self.norm2, eps)?;
        let g = self.ff_in.forward(&h)?;
        let hidden = g.dim(D::Minus1)? / 2;
        let a = candle_nn::ops::silu(&g.narrow(D::Minus1, 0, hidden)?)?;
        let u = (a * g.narrow(D::Minus1, hidden, hidden)?)?;
        x + self.ff_out.forward(&u)?
    }
}

/// Row `i` of `q` ([B, H, 1, hd], f32 on the CPU) against `cache` after storing this
/// step's key and value (`[1, H, 1, hd]`) in it, into `out` (`[H * hd]`).
#[allow(clippy::too_many_arguments)]
fn attend_cpu(
    q: &Tensor,
    i: usize,
    k: &Tensor,
    v: &Tensor,
    cache: &mut RingKv,
    hd: usize,
    scale: f32,
    out: &mut [f32],
) -> candle_core::Result<()> {
    let d = out.len();
    let (ks, vs, len) = cache.push_raw(k, v)?;
    let (qs, ql) = q.storage_and_layout();
    let (kst, kl) = ks.storage_and_layout();
    let (vst, vl) = vs.storage_and_layout();
    let (Storage::Cpu(qs), Storage::Cpu(kst), Storage::Cpu(vst)) = (&*qs, &*kst, &*vst) else {
        candle_core::bail!("attention: tensors not on the CPU");
    };
    let at = ql.start_offset() + i * d;
    let qs = &qs.as_slice::<f32>()?[at..at + d];
    let n = ks.elem_count();
    let kst = &kst.as_slice::<f32>()?[kl.start_offset()..kl.start_offset() + n];
    let vst = &vst.as_slice::<f32>()?[vl.start_offset()..vl.start_offset() + n];
    super::attend::attend_one(qs, kst, vst, n / d, len, hd, scale, out);
    Ok(())
}

/// RMSNorm computed in f32 (the reference's `rms_norm_f32`), output in the input dtype.
fn rms_norm(x: &Tensor, alpha: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let dt = x.dtype();
    candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?, alpha, eps as f32)?.to_dtype(dt)
}

/// Interleaved-RoPE cos/sin for one position per row, `[B, 1, head_dim / 2]` each, in f32.
/// Angles are formed in f64 so that hours-long conversations keep exact phases.
fn rope_tables(
    head_dim: usize,
    max_period: f64,
    pos: &[usize],
    dev: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(pos.len() * half);
    let mut sin = Vec::with_capacity(pos.len() * half);
    let scale = (-(max_period.ln()) * 2.0 / head_dim as f64) as f32;
    for &p in pos {
        for i in 0..half {
            // Same f32 frequency as the reference.
            let freq = (i as f32 * scale).exp() as f64;
            let a = freq * p as f64;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    let shape = (pos.len(), 1, half);
    Ok((
        Tensor::from_vec(cos, shape, dev)?,
        Tensor::from_vec(sin, shape, dev)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn gpu_allocations_are_counted() {
        // The q8_0 7B at the default context: 8.17 GB of weights + 1.57 GB f16 KV cache.
        let est = MemoryEstimate {
            weights_bytes: 8_170_000_000,
            kv_cache_bytes: 1_572_864_000,
        };
        let nano = DeviceKind::Cuda {
            major: 8,
            minor: 7,
            integrated: true,
        };
        let h100 = DeviceKind::Cuda {
            major: 9,
            minor: 0,
            integrated: false,
        };
        // An 8 GB Jetson with ~6.5 GB free after the OS: refused, naming the shared RAM.
        let e = est
            .check_against(nano, Some(6_500_000_000), 3000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("shares the host's RAM"), "{e}");
        assert!(e.contains("CUDA runtime"), "{e}");
        // The runtime allowance counts: fits on the CPU, not on the GPU, with the same bytes.
        let just = est.total() + CUDA_RUNTIME_BYTES / 2;
        assert!(est.check_against(DeviceKind::Cpu, Some(just), 3000).is_ok());
        assert!(est.check_against(h100, Some(just), 3000).is_err());
        assert!(est.check_against(h100, Some(80 * GB), 3000).is_ok());
        assert!(est.check_against(nano, None, 3000).is_ok());
        assert_eq!(est.needed_on(nano), est.total() + CUDA_RUNTIME_BYTES);
    }
}
