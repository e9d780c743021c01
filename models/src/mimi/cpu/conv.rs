//! Streaming causal convolutions on time-major activations (`[T, C]`: one row of channels per
//! time step), with the reference's padding conventions.
//!
//! Time-major rows make a convolution's im2col free: the `K` input rows an output reads are
//! contiguous, so the matrix kernel reads them in place (`lda = stride * C_in`). A convolution
//! keeps the last `effective_kernel - stride` input rows of the previous call at the front of
//! its input buffer (zeros at the start, or the first row repeated for `replicate` padding);
//! a transposed convolution keeps the overlap tail later input still adds to.

use std::sync::Arc;

use super::gemm::{dense, gemm_jobs, Epi, Jobs, MAX_JOBS};
use super::isa::Isa;
use super::micro::Geom;
use super::packed::{PackedMat, WeightDtype};

/// Grows `v` to at least `n` values (allocates only when a call is longer than any before)
/// and returns its first `n`.
pub(crate) fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Streaming `Conv1d`.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    /// `[K * C_in, C_out]`, reduction index `tap * C_in + channel`.
    w: Arc<PackedMat>,
    bias: Option<Arc<Vec<f32>>>,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    k: usize,
    stride: usize,
    dilation: usize,
    /// Rows carried between calls (`effective_kernel - stride`).
    context: usize,
    replicate: bool,
    /// `[context + T, C_in]`: carried rows, then this call's input.
    buf: Vec<f32>,
    primed: bool,
    t_in: usize,
}

impl Conv {
    /// `w`: PyTorch layout `[C_out, C_in, K]` (flattened), `bias`: `[C_out]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        w: &[f32],
        shape: (usize, usize, usize),
        bias: Option<Vec<f32>>,
        stride: usize,
        dilation: usize,
        replicate: bool,
        dtype: WeightDtype,
    ) -> Conv {
        let (c_out, c_in, k) = shape;
        let mut m = vec![0f32; k * c_in * c_out];
        for o in 0..c_out {
            for c in 0..c_in {
                for t in 0..k {
                    m[(t * c_in + c) * c_out + o] = w[(o * c_in + c) * k + t];
                }
            }
        }
        let eff = (k - 1) * dilation + 1;
        Conv {
            w: Arc::new(PackedMat::new(&m, k * c_in, c_out, dtype)),
            bias: bias.map(Arc::new),
            c_in,
            c_out,
            k,
            stride,
            dilation,
            context: eff.saturating_sub(stride),
            replicate,
            buf: Vec::new(),
            primed: false,
            t_in: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.primed = false;
    }

    /// Bytes of streaming state and buffers.
    pub(crate) fn state_bytes(&self) -> usize {
        self.buf.capacity() * 4
    }

    /// The same weights with a fresh state and no buffers yet.
    pub(crate) fn fresh(&self) -> Conv {
        Conv {
            w: Arc::clone(&self.w),
            bias: self.bias.clone(),
            buf: Vec::new(),
            primed: false,
            t_in: 0,
            ..*self
        }
    }

    /// Weight bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.w.bytes()
    }

    /// The slot for the next `t_in` input rows (`[t_in, C_in]`); `t_in` must be a multiple of
    /// the stride. Fill it, then run it with [`run_convs`].
    pub(crate) fn input(&mut self, t_in: usize) -> &mut [f32] {
        self.t_in = t_in;
        let (ctx, c) = (self.context, self.c_in);
        let buf = grow(&mut self.buf, (ctx + t_in) * c);
        &mut buf[ctx * c..]
    }

    /// Output rows of the pending call.
    pub(crate) fn t_out(&self) -> usize {
        self.t_in / self.stride
    }

    /// Fills the carried rows before the first call (zeros, or the first row repeated) and
    /// returns the pending call's activations.
    fn pending(&mut self) -> &[f32] {
        let (ctx, c) = (self.context, self.c_in);
        if !self.primed && ctx > 0 {
            let (head, rest) = self.buf.split_at_mut(ctx * c);
            if self.replicate {
                for r in head.chunks_exact_mut(c) {
                    r.copy_from_slice(&rest[..c]);
                }
            } else {
                head.fill(0.0);
            }
        }
        self.primed = true;
        &self.buf[..(ctx + self.t_in) * c]
    }

    /// Keeps the last `context` input rows for the next call.
    fn carry(&mut self) {
        let (ctx, c) = (self.context, self.c_in);
        let rows = ctx + self.t_in;
        if ctx > 0 {
            self.buf.copy_within((rows - ctx) * c..rows * c, 0);
        }
    }

    fn geom(&self) -> Geom {
        let c = self.c_in;
        if self.dilation == 1 {
            dense(self.stride * c, self.k * c)
        } else {
            Geom {
                lda: self.stride * c,
                taps: self.k,
                len: c,
                tap_stride: self.dilation * c,
            }
        }
    }
}

/// Runs the pending call of several streams' copies of one convolution (the same weights),
/// reading each weight once for all of them: `(conv, out)` per stream; `out` gets
/// `[t_out, C_out]` (with `residual`, added to what it holds). Carries each context on.
pub(crate) fn run_convs(isa: Isa, convs: &mut [(&mut Conv, &mut [f32])], residual: bool) {
    for chunk in convs.chunks_mut(MAX_JOBS) {
        let Some((c0, _)) = chunk.first() else {
            return;
        };
        let (w, bias, g) = (Arc::clone(&c0.w), c0.bias.clone(), c0.geom());
        let epi = match (&bias, residual) {
            (Some(b), false) => Epi::Bias(b),
            (Some(b), true) => Epi::AddBias(b),
            (None, false) => Epi::Store,
            (None, true) => panic!("residual convolution without bias"),
        };
        let mut jobs = Jobs::new();
        for (c, out) in chunk.iter_mut() {
            let m = c.t_out();
            jobs.push(c.pending(), m, out);
        }
        gemm_jobs(isa, &jobs, g, &w, w.n, epi);
        for (c, _) in chunk.iter_mut() {
            c.carry();
        }
    }
}

/// Streaming `ConvTranspose1d` with `kernel = 2 * stride` (all of Mimi's): one matrix product
/// `[T, C_in] @ [C_in, 2 * S * C_out]`, then an overlap-add of the two halves.
#[derive(Debug, Clone)]
pub(crate) struct ConvTr {
    /// `[C_in, 2S * C_out]`, column `k * C_out + o`.
    w: Arc<PackedMat>,
    bias: Option<Arc<Vec<f32>>>,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    s: usize,
    input: Vec<f32>,
    y: Vec<f32>,
    /// `[S, C_out]` tail of the last call (without bias).
    partial: Vec<f32>,
    t_in: usize,
}

impl ConvTr {
    /// `w`: PyTorch layout `[C_in, C_out, 2 * stride]` (flattened).
    pub(crate) fn new(
        w: &[f32],
        shape: (usize, usize, usize),
        bias: Option<Vec<f32>>,
        dtype: WeightDtype,
    ) -> ConvTr {
        let (c_in, c_out, k) = shape;
        let s = k / 2;
        let mut m = vec![0f32; c_in * k * c_out];
        for c in 0..c_in {
            for o in 0..c_out {
                for t in 0..k {
                    m[c * k * c_out + t * c_out + o] = w[(c * c_out + o) * k + t];
                }
            }
        }
        ConvTr {
            w: Arc::new(PackedMat::new(&m, c_in, k * c_out, dtype)),
            bias: bias.map(Arc::new),
            c_in,
            c_out,
            s,
            input: Vec::new(),
            y: Vec::new(),
            partial: vec![0.0; s * c_out],
            t_in: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.partial.fill(0.0);
    }

    /// Bytes of streaming state and buffers.
    pub(crate) fn state_bytes(&self) -> usize {
        (self.input.capacity() + self.y.capacity() + self.partial.capacity()) * 4
    }

    /// The same weights with a fresh state and no buffers yet.
    pub(crate) fn fresh(&self) -> ConvTr {
        ConvTr {
            w: Arc::clone(&self.w),
            bias: self.bias.clone(),
            input: Vec::new(),
            y: Vec::new(),
            partial: vec![0.0; self.s * self.c_out],
            t_in: 0,
            ..*self
        }
    }

    /// Weight bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.w.bytes()
    }

    /// The slot for the next `t_in` input rows (`[t_in, C_in]`).
    pub(crate) fn input(&mut self, t_in: usize) -> &mut [f32] {
        self.t_in = t_in;
        grow(&mut self.input, t_in * self.c_in)
    }

    /// Output rows of the pending call.
    pub(crate) fn t_out(&self) -> usize {
        self.t_in * self.s
    }
}

/// Runs the pending call of several streams' copies of one transposed convolution (the same
/// weights), each weight read once for all of them: `(conv, out)` per stream, `out` getting
/// `[t_in * S, C_out]`.
pub(crate) fn run_convtrs(isa: Isa, convs: &mut [(&mut ConvTr, &mut [f32])]) {
    for chunk in convs.chunks_mut(MAX_JOBS) {
        let Some((c0, _)) = chunk.first() else {
            return;
        };
        let w = Arc::clone(&c0.w);
        let g = dense(c0.c_in, c0.c_in);
        let mut jobs = Jobs::new();
        for (c, _) in chunk.iter_mut() {
            let (t, blk, ci) = (c.t_in, c.s * c.c_out, c.c_in);
            let ConvTr { input, y, .. } = &mut **c;
            jobs.push(&input[..t * ci], t, grow(y, t * 2 * blk));
        }
        gemm_jobs(isa, &jobs, g, &w, w.n, Epi::Store);
        for (c, out) in chunk.iter_mut() {
            let (t, blk) = (c.t_in, c.s * c.c_out);
            let bias = c.bias.as_deref().map(|b| &b[..]);
            overlap_add(
                &c.y[..t * 2 * blk],
                &mut c.partial,
                bias,
                c.c_out,
                &mut out[..t * blk],
            );
        }
    }
}

/// Output block `j` = head of input step `j` + tail of step `j - 1` (the carried `partial`
/// for `j = 0`), plus the bias; `y` rows are `[head | tail]`, each `S * C` long.
fn overlap_add(y: &[f32], partial: &mut [f32], bias: Option<&[f32]>, c: usize, out: &mut [f32]) {
    let blk = partial.len();
    let t = out.len() / blk;
    for j in 0..t {
        let head = &y[j * 2 * blk..j * 2 * blk + blk];
        let tail = if j == 0 {
            &partial[..]
        } else {
            &y[(j - 1) * 2 * blk + blk..j * 2 * blk]
        };
        let dst = &mut out[j * blk..(j + 1) * blk];
        match bias {
            Some(b) => {
                for (i, ((d, &h), &p)) in dst.iter_mut().zip(head).zip(tail).enumerate() {
                    *d = (h + p) + b[i % c];
                }
            }
            None => {
                for ((d, &h), &p) in dst.iter_mut().zip(head).zip(tail) {
                    *d = h + p;
                }
            }
        }
    }
    if t > 0 {
        partial.copy_from_slice(&y[(t - 1) * 2 * blk + blk..t * 2 * blk]);
    }
}

/// Depthwise streaming transposed convolution (`groups = C`, kernel `2 * stride`, no bias):
/// Mimi's learnt upsampling.
#[derive(Debug, Clone)]
pub(crate) struct DepthwiseConvTr {
    /// `[C, 2S]`.
    w: Arc<Vec<f32>>,
    c: usize,
    s: usize,
    partial: Vec<f32>,
}

impl DepthwiseConvTr {
    /// `w`: PyTorch layout `[C, 1, 2 * stride]` (flattened).
    pub(crate) fn new(w: &[f32], c: usize, stride: usize) -> DepthwiseConvTr {
        DepthwiseConvTr {
            w: Arc::new(w.to_vec()),
            c,
            s: stride,
            partial: vec![0.0; stride * c],
        }
    }

    pub(crate) fn reset(&mut self) {
        self.partial.fill(0.0);
    }

    /// Bytes of streaming state.
    pub(crate) fn state_bytes(&self) -> usize {
        self.partial.capacity() * 4
    }

    /// The same weights with a fresh state.
    pub(crate) fn fresh(&self) -> DepthwiseConvTr {
        DepthwiseConvTr {
            w: Arc::clone(&self.w),
            partial: vec![0.0; self.s * self.c],
            ..*self
        }
    }

    /// Output rows per input row.
    pub(crate) fn stride(&self) -> usize {
        self.s
    }

    /// `x`: `[T, C]` -> `out`: `[T * S, C]`.
    pub(crate) fn run(&mut self, x: &[f32], out: &mut [f32]) {
        let (c, s) = (self.c, self.s);
        let k = 2 * s;
        let t = x.len() / c;
        for j in 0..t {
            let xr = &x[j * c..(j + 1) * c];
            for i in 0..s {
                let dst = &mut out[(j * s + i) * c..(j * s + i + 1) * c];
                let prev = &self.partial[i * c..(i + 1) * c];
                for ch in 0..c {
                    dst[ch] = xr[ch] * self.w[ch * k + i] + prev[ch];
                }
            }
            for i in 0..s {
                let p = &mut self.partial[i * c..(i + 1) * c];
                for ch in 0..c {
                    p[ch] = xr[ch] * self.w[ch * k + s + i];
                }
            }
        }
    }
}
