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

    /// One step of several streams of this convolution: `x` is `[B, C_in, T]` (`T` a
    /// multiple of the stride), row `b` continuing `convs[b]`'s stream (all with the first
    /// one's weights); returns `[B, C_out, T / stride]`, each row what its stream gives alone.
    pub(crate) fn step_batch(convs: &mut [&mut StreamConv1d], x: &Tensor) -> Result<Tensor> {
        let Some(first) = convs.first() else {
            candle_core::bail!("a batched convolution step needs at least one stream")
        };
        let context = first.context;
        let x = if context == 0 {
            x.clone()
        } else {
            let prev = convs
                .iter()
                .enumerate()
                .map(|(b, c)| c.carried(&x.narrow(0, b, 1)?))
                .collect::<Result<Vec<_>>>()?;
            let full = Tensor::cat(&[&Tensor::cat(&prev, 0)?, x], D::Minus1)?;
            let len = full.dim(D::Minus1)?;
            for (b, c) in convs.iter_mut().enumerate() {
                let kept = full
                    .narrow(0, b, 1)?
                    .narrow(D::Minus1, len - context, context)?;
                c.prev = Some(kept.contiguous()?);
            }
            full
        };
        let first = &convs[0];
        let y = match &first.weight {
            ConvWeight::Packed(w) => first.packed_conv(w, &x)?,
            ConvWeight::Plain(w) => x.conv1d(w, 0, first.stride, first.dilation, 1)?,
        };
        match &first.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The samples this stream carries in front of `x` (`[1, C, T]`): the previous call's
    /// tail, or at the start zeros (or `x`'s first sample, for replicate padding).
    fn carried(&self, x: &Tensor) -> Result<Tensor> {
        match &self.prev {
            Some(p) => Ok(p.clone()),
            None if self.replicate => x.narrow(D::Minus1, 0, 1)?.repeat((1, 1, self.context)),
            None => Tensor::zeros((1, x.dim(1)?, self.context), x.dtype(), x.device()),
        }
    }

    /// The CPU kernels' convolution of `x` (`[B, C_in, L]`, context included): each row
    /// unfolded, all rows in one product over the packed weight.
    fn packed_conv(&self, w: &Packed, x: &Tensor) -> Result<Tensor> {
        let batch = x.dim(0)?;
        let cols = (0..batch)
            .map(|b| {
                let x = x.get(b)?;
                if self.kernel == 1 && self.stride == 1 {
                    x.t()
                } else {
                    im2col(&x, self.kernel, self.stride, self.dilation)
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let t_out = cols[0].dim(0)?;
        let y = w.mm_t(&Tensor::cat(&cols, 0)?)?; // [C_out, B * T_out]
        let c_out = y.dim(0)?;
        y.reshape((c_out, batch, t_out))?
            .transpose(0, 1)?
            .contiguous()
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

    /// Several streams of one transposed convolution at once: `x` is `[B, C_in, T]`, row `b`
    /// continuing `convs[b]`'s stream (all with the first one's weights); returns
    /// `[B, C_out, T * stride]`.
    pub(crate) fn step_batch(convs: &mut [&mut StreamConvTr1d], x: &Tensor) -> Result<Tensor> {
        let Some(first) = convs.first() else {
            candle_core::bail!("a batched transposed convolution step needs at least one stream")
        };
        let (batch, c_in, t) = x.dims3()?;
        let (s, c_out) = (first.stride, first.c_out);
        // cols[b, t, c, k]: the contribution of input step t to output sample t*S + k.
        let xt = x.transpose(1, 2)?.reshape((batch * t, c_in))?;
        let cols = match (&first.dense, &first.depthwise) {
            (Some(w), _) => w.mm(&xt)?,
            (None, Some(w)) => xt.unsqueeze(2)?.broadcast_mul(w)?,
            (None, None) => candle_core::bail!("transposed conv without weights"),
        };
        let cols = cols.reshape((batch, t, c_out, 2, s))?;
        let head = cols.narrow(3, 0, 1)?.squeeze(3)?; // [B, T, C, S]
        let tail = cols.narrow(3, 1, 1)?.squeeze(3)?; // [B, T, C, S]
        let partial = convs
            .iter()
            .map(|c| match &c.partial {
                Some(p) => Ok(p.clone()),
                None => Tensor::zeros((1, c_out, s), x.dtype(), x.device()),
            })
            .collect::<Result<Vec<_>>>()?;
        // Output block j = head[j] + tail[j - 1]; tail[-1] is the carried partial.
        let shifted = Tensor::cat(&[&Tensor::stack(&partial, 0)?, &tail], 1)?; // [B, T + 1, C, S]
        let out = (head + shifted.narrow(1, 0, t)?)?;
        for (b, c) in convs.iter_mut().enumerate() {
            c.partial = Some(shifted.get(b)?.narrow(0, t, 1)?.contiguous()?);
        }
        let out = out.permute((0, 2, 1, 3))?.reshape((batch, c_out, t * s))?;
        match &convs[0].bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

/// ELU with alpha 1, as `torch.nn.ELU()`.
pub(crate) fn elu(x: &Tensor) -> Result<Tensor> {
    x.elu(1.0)
}
