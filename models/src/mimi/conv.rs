//! Causal streaming convolutions with the reference's padding conventions.
//!
//! A convolution keeps the last `effective_kernel - stride` input samples of the previous call
//! (zeros at the start, or the first sample repeated for `replicate` padding), so feeding a
//! signal in one piece or in stride-aligned pieces gives the same output. A transposed
//! convolution keeps the overlap tail (`kernel - stride` samples, without bias) that later
//! input still adds to, and emits `T * stride` samples per `T` input steps.

use candle_core::{Result, Tensor, D};

use super::kernels::{im2col, Packed};

/// A convolution kernel: packed `[C_in * K, C_out]` for the CPU kernels, or the PyTorch
/// layout `[C_out, C_in, K]` for candle's conv1d on other devices.
#[derive(Debug, Clone)]
enum ConvWeight {
    Packed(Packed),
    Plain(Tensor),
}

/// Streaming causal `Conv1d` on `[1, C, T]` tensors.
#[derive(Debug, Clone)]
pub(crate) struct StreamConv1d {
    weight: ConvWeight,
    kernel: usize,
    bias: Option<Tensor>,
    stride: usize,
    dilation: usize,
    /// Input samples carried over between calls (`effective_kernel - stride`).
    context: usize,
    replicate: bool,
    prev: Option<Tensor>,
}

impl StreamConv1d {
    /// `weight` is `[C_out, C_in, K]`, `bias` `[C_out]`; `steps_out` is the output length
    /// of one streaming call (chooses the matmul layout).
    pub(crate) fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        dilation: usize,
        replicate: bool,
        steps_out: usize,
    ) -> Result<Self> {
        let (c_out, c_in, k) = weight.dims3()?;
        let eff = (k - 1) * dilation + 1;
        let weight = if weight.device().is_cpu() && weight.dtype() == candle_core::DType::F32 {
            ConvWeight::Packed(Packed::new(
                &weight.reshape((c_out, c_in * k))?.t()?,
                steps_out,
            )?)
        } else {
            ConvWeight::Plain(weight)
        };
        let bias = match bias {
            Some(b) => Some(b.reshape((1, (), 1))?),
            None => None,
        };
        Ok(Self {
            weight,
            kernel: k,
            bias,
            stride,
            dilation,
            context: eff.saturating_sub(stride),
            replicate,
            prev: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.prev = None;
    }

    /// `x`: `[1, C_in, T]` with `T` a multiple of the stride; returns `[1, C_out, T / stride]`.
    pub(crate) fn step(&mut self, x: &Tensor) -> Result<Tensor> {
        let x = if self.context == 0 {
            x.clone()
        } else {
            let prev = match &self.prev {
                Some(p) => p.clone(),
                None if self.replicate => {
                    x.narrow(D::Minus1, 0, 1)?.repeat((1, 1, self.context))?
                }
                None => Tensor::zeros((1, x.dim(1)?, self.context), x.dtype(), x.device())?,
            };
            let full = Tensor::cat(&[&prev, x], D::Minus1)?;
            let len = full.dim(D::Minus1)?;
            self.prev = Some(
                full.narrow(D::Minus1, len - self.context, self.context)?
                    .contiguous()?,
            );
            full
        };
        let y = match &self.weight {
            ConvWeight::Packed(w) => {
                let x = x.squeeze(0)?;
                let cols = if self.kernel == 1 && self.stride == 1 {
                    x.t()?
                } else {
                    im2col(&x, self.kernel, self.stride, self.dilation)?
                };
                w.mm_t(&cols)?.unsqueeze(0)?
            }
            ConvWeight::Plain(w) => x.conv1d(w, 0, self.stride, self.dilation, 1)?,
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Streaming causal `ConvTranspose1d` with `kernel = 2 * stride` (all of Mimi's), computed as
/// one matrix product plus an overlap-add of two halves.
#[derive(Debug, Clone)]
pub(crate) struct StreamConvTr1d {
    /// `[C_in, C_out * K]` for dense.
    dense: Option<Packed>,
    /// `[1, C, K]` for depthwise.
    depthwise: Option<Tensor>,
    bias: Option<Tensor>,
    c_out: usize,
    stride: usize,
    /// `[C_out, 1, S]`-shaped overlap carried to the next call (without bias).
    partial: Option<Tensor>,
}

impl StreamConvTr1d {
    /// `weight` is the PyTorch layout `[C_in, C_out / groups, K]`; `depthwise` means
    /// `groups = C_in = C_out`; `steps_in` is the input length of one streaming call.
    pub(crate) fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: usize,
        depthwise: bool,
        steps_in: usize,
    ) -> Result<Self> {
        let (c_in, c_per_group, k) = weight.dims3()?;
        if k != 2 * stride {
            candle_core::bail!("transposed conv kernel {k} must be twice its stride {stride}");
        }
        let (dense, depthwise, c_out) = if depthwise {
            (None, Some(weight.reshape((1, c_in, k))?), c_in)
        } else {
            let w = weight.reshape((c_in, c_per_group * k))?;
            (Some(Packed::new(&w, steps_in)?), None, c_per_group)
        };
        let bias = match bias {
            Some(b) => Some(b.reshape((1, (), 1))?),
            None => None,
        };
        Ok(Self {
            dense,
            depthwise,
            bias,
            c_out,
            stride,
            partial: None,
        })
    }

    pub(crate) fn reset(&mut self) {
        self.partial = None;
    }

    /// `x`: `[1, C_in, T]`; returns `[1, C_out, T * stride]`.
    pub(crate) fn step(&mut self, x: &Tensor) -> Result<Tensor> {
        let t = x.dim(2)?;
        let s = self.stride;
        // cols[t, c, k]: the contribution of input step t to output sample t*S + k.
        let xt = x.squeeze(0)?.t()?;
        let cols = match (&self.dense, &self.depthwise) {
            (Some(w), _) => w.mm(&xt)?,
            (None, Some(w)) => xt.unsqueeze(2)?.broadcast_mul(w)?,
            (None, None) => candle_core::bail!("transposed conv without weights"),
        };
        let cols = cols.reshape((t, self.c_out, 2, s))?;
        let head = cols.narrow(2, 0, 1)?.squeeze(2)?; // [T, C, S]
        let tail = cols.narrow(2, 1, 1)?.squeeze(2)?; // [T, C, S]
        let partial = match &self.partial {
            Some(p) => p.clone(),
            None => Tensor::zeros((1, self.c_out, s), x.dtype(), x.device())?,
        };
        // Output block j = head[j] + tail[j - 1]; tail[-1] is the carried partial.
        let shifted = Tensor::cat(&[&partial, &tail], 0)?; // [T + 1, C, S]
        let out = (head + shifted.narrow(0, 0, t)?)?;
        self.partial = Some(shifted.narrow(0, t, 1)?.contiguous()?);
        let out = out.permute((1, 0, 2))?.reshape((1, self.c_out, t * s))?;
        match &self.bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

/// ELU with alpha 1, as `torch.nn.ELU()`.
pub(crate) fn elu(x: &Tensor) -> Result<Tensor> {
    x.elu(1.0)
}
