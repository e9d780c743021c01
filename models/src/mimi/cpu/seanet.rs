//! SEANet encoder and decoder on time-major buffers: each layer's ELU is written straight
//! into the next convolution's input slot, and a residual block adds into the stream in place.

use std::time::Instant;

use super::conv::{grow, run_convs, run_convtrs, Conv, ConvTr};
use super::gemm::MAX_JOBS;
use super::isa::Isa;
use super::profile::{Kind, Prof};
use super::vmath::elu;
use super::{tensor, Load};
use crate::mimi::config::SeanetConfig;
use crate::mimi::MimiError;

/// One stage of the stack.
#[derive(Debug, Clone)]
enum Layer {
    /// The first convolution (no activation before it).
    Conv(Conv),
    /// ELU, then a (strided) convolution.
    EluConv(Conv),
    /// ELU, then a transposed convolution.
    EluConvTr(ConvTr),
    /// `x + conv2(elu(conv1(elu(x))))`.
    Res(Conv, Conv),
}

/// A SEANet stack with its streaming state and buffers.
#[derive(Debug, Clone)]
pub(crate) struct Seanet {
    layers: Vec<Layer>,
    /// The stream between layers, `[T, C]`.
    cur: Vec<f32>,
    next: Vec<f32>,
    /// A residual block's hidden activations.
    hidden: Vec<f32>,
    channels: usize,
    /// Values of the last call's output in `cur`.
    out_len: usize,
}

fn conv(l: &Load, p: &str, stride: usize, dilation: usize) -> Result<Conv, MimiError> {
    let (w, s) = tensor(l.w, &format!("{p}.conv.conv.weight"))?;
    let (b, _) = tensor(l.w, &format!("{p}.conv.conv.bias"))?;
    Ok(Conv::new(
        &w,
        (s[0], s[1], s[2]),
        Some(b),
        stride,
        dilation,
        false,
        l.dtype,
    ))
}

fn res_blocks(
    l: &Load,
    cfg: &SeanetConfig,
    prefix: &str,
    idx: &mut usize,
    layers: &mut Vec<Layer>,
) -> Result<(), MimiError> {
    let mut dilation = 1;
    for _ in 0..cfg.n_residual_layers {
        let p = format!("{prefix}.model.{idx}.block");
        layers.push(Layer::Res(
            conv(l, &format!("{p}.1"), 1, dilation)?,
            conv(l, &format!("{p}.3"), 1, 1)?,
        ));
        dilation *= cfg.dilation_base;
        *idx += 1;
    }
    Ok(())
}

impl Seanet {
    pub(crate) fn encoder(l: &Load, cfg: &SeanetConfig) -> Result<Self, MimiError> {
        let mut layers = vec![Layer::Conv(conv(l, "encoder.model.0", 1, 1)?)];
        let mut idx = 1;
        for &r in cfg.ratios.iter().rev() {
            res_blocks(l, cfg, "encoder", &mut idx, &mut layers)?;
            idx += 1; // ELU
            layers.push(Layer::EluConv(conv(
                l,
                &format!("encoder.model.{idx}"),
                r,
                1,
            )?));
            idx += 1;
        }
        idx += 1; // ELU
        layers.push(Layer::EluConv(conv(
            l,
            &format!("encoder.model.{idx}"),
            1,
            1,
        )?));
        Ok(Self::with(layers, cfg.dimension))
    }

    pub(crate) fn decoder(l: &Load, cfg: &SeanetConfig) -> Result<Self, MimiError> {
        let mut layers = vec![Layer::Conv(conv(l, "decoder.model.0", 1, 1)?)];
        let mut idx = 1;
        for &r in &cfg.ratios {
            idx += 1; // ELU
            let p = format!("decoder.model.{idx}.convtr.convtr");
            let (w, s) = tensor(l.w, &format!("{p}.weight"))?;
            let (b, _) = tensor(l.w, &format!("{p}.bias"))?;
            if s[2] != 2 * r {
                return Err(MimiError::Config(format!(
                    "{p}: kernel {} must be twice the ratio {r}",
                    s[2]
                )));
            }
            layers.push(Layer::EluConvTr(ConvTr::new(
                &w,
                (s[0], s[1], s[2]),
                Some(b),
                l.dtype,
            )));
            idx += 1;
            res_blocks(l, cfg, "decoder", &mut idx, &mut layers)?;
        }
        idx += 1; // ELU
        layers.push(Layer::EluConv(conv(
            l,
            &format!("decoder.model.{idx}"),
            1,
            1,
        )?));
        Ok(Self::with(layers, cfg.channels))
    }

    fn with(layers: Vec<Layer>, channels: usize) -> Self {
        Seanet {
            layers,
            cur: Vec::new(),
            next: Vec::new(),
            hidden: Vec::new(),
            channels,
            out_len: 0,
        }
    }

    pub(crate) fn reset(&mut self) {
        for l in &mut self.layers {
            match l {
                Layer::Conv(c) | Layer::EluConv(c) => c.reset(),
                Layer::EluConvTr(c) => c.reset(),
                Layer::Res(a, b) => {
                    a.reset();
                    b.reset();
                }
            }
        }
    }

    /// The same weights with a fresh state and no buffers yet.
    pub(crate) fn fresh(&self) -> Seanet {
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::Conv(c) => Layer::Conv(c.fresh()),
                Layer::EluConv(c) => Layer::EluConv(c.fresh()),
                Layer::EluConvTr(c) => Layer::EluConvTr(c.fresh()),
                Layer::Res(a, b) => Layer::Res(a.fresh(), b.fresh()),
            })
            .collect();
        Self::with(layers, self.channels)
    }

    /// Bytes of streaming state and buffers.
    pub(crate) fn state_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| match l {
                Layer::Conv(c) | Layer::EluConv(c) => c.state_bytes(),
                Layer::EluConvTr(c) => c.state_bytes(),
                Layer::Res(a, b) => a.state_bytes() + b.state_bytes(),
            })
            .sum();
        layers + (self.cur.capacity() + self.next.capacity() + self.hidden.capacity()) * 4
    }

    /// Weight bytes.
    pub(crate) fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                Layer::Conv(c) | Layer::EluConv(c) => c.bytes(),
                Layer::EluConvTr(c) => c.bytes(),
                Layer::Res(a, b) => a.bytes() + b.bytes(),
            })
            .sum()
    }

    /// The last call's output.
    pub(crate) fn output(&self) -> &[f32] {
        &self.cur[..self.out_len]
    }

    /// Runs each stream's `x` (`[T, C_in]`, time-major) through the stack, for several
    /// streams' copies of one stack (the same weights), each input of the same length: every layer reads its weights once for all of
    /// them. Outputs are read with [`Seanet::output`].
    pub(crate) fn step_batch(isa: Isa, lanes: &mut [(&mut Seanet, &[f32])], prof: &mut Prof) {
        let Some((s0, x0)) = lanes.first() else {
            return;
        };
        let n = s0.layers.len();
        let mut rows = x0.len() / first_c_in(s0);
        let mut t0 = Instant::now();
        for li in 0..n {
            let (next_rows, t) = match &lanes[0].0.layers[li] {
                Layer::Conv(_) => Self::conv_batch(isa, lanes, li, rows, false, prof, t0),
                Layer::EluConv(_) => Self::conv_batch(isa, lanes, li, rows, true, prof, t0),
                Layer::EluConvTr(_) => Self::convtr_batch(isa, lanes, li, rows, prof, t0),
                Layer::Res(..) => {
                    t0 = Self::res_batch(isa, lanes, li, rows, prof, t0);
                    continue;
                }
            };
            (rows, t0) = (next_rows, t);
            for (s, _) in lanes.iter_mut() {
                std::mem::swap(&mut s.cur, &mut s.next);
            }
        }
        for (s, _) in lanes.iter_mut() {
            let c = match s.layers.last() {
                Some(Layer::Conv(c) | Layer::EluConv(c)) => c.c_out,
                _ => s.channels,
            };
            s.out_len = rows * c;
        }
    }

    /// A (strided) convolution layer over every stream, reading the stack's input (layer 0)
    /// or `cur`, through an ELU first with `elu_first`, into `next`; returns its output rows.
    fn conv_batch(
        isa: Isa,
        lanes: &mut [(&mut Seanet, &[f32])],
        li: usize,
        rows: usize,
        elu_first: bool,
        prof: &mut Prof,
        mut t0: Instant,
    ) -> (usize, Instant) {
        for (s, x) in lanes.iter_mut() {
            let Seanet { layers, cur, .. } = &mut **s;
            let src: &[f32] = if li == 0 { x } else { cur };
            let c = conv_of(&mut layers[li]);
            let n_in = rows * c.c_in;
            if elu_first {
                elu(isa, &src[..n_in], c.input(rows));
            } else {
                c.input(rows).copy_from_slice(&src[..n_in]);
            }
        }
        if elu_first {
            t0 = prof.lap(Kind::Elu, t0);
        }
        let out_rows = conv_of(&mut lanes[0].0.layers[li]).t_out();
        let mut convs: Batch<(&mut Conv, &mut [f32])> = lanes
            .iter_mut()
            .map(|(s, _)| {
                let Seanet { layers, next, .. } = &mut **s;
                let c = conv_of(&mut layers[li]);
                let out = grow(next, out_rows * c.c_out);
                (c, out)
            })
            .collect();
        run_convs(isa, &mut convs, false);
        (out_rows, prof.lap(Kind::Conv, t0))
    }

    /// ELU then a transposed convolution over every stream, `cur` into `next`; returns its
    /// output rows.
    fn convtr_batch(
        isa: Isa,
        lanes: &mut [(&mut Seanet, &[f32])],
        li: usize,
        rows: usize,
        prof: &mut Prof,
        mut t0: Instant,
    ) -> (usize, Instant) {
        let mut convs: Batch<(&mut ConvTr, &mut [f32])> = lanes
            .iter_mut()
            .map(|(s, _)| {
                let Seanet {
                    layers, cur, next, ..
                } = &mut **s;
                let Layer::EluConvTr(c) = &mut layers[li] else {
                    unreachable!("streams of one model have the same layers")
                };
                elu(isa, &cur[..rows * c.c_in], c.input(rows));
                let out = grow(next, c.t_out() * c.c_out);
                (c, out)
            })
            .collect();
        t0 = prof.lap(Kind::Elu, t0);
        let out_rows = convs.first().map_or(0, |c| c.0.t_out());
        run_convtrs(isa, &mut convs);
        (out_rows, prof.lap(Kind::ConvTr, t0))
    }

    /// A residual block over every stream: `x + conv2(elu(conv1(elu(x))))` in place.
    fn res_batch(
        isa: Isa,
        lanes: &mut [(&mut Seanet, &[f32])],
        li: usize,
        rows: usize,
        prof: &mut Prof,
        mut t0: Instant,
    ) -> Instant {
        let mut first: Batch<(&mut Conv, &mut [f32])> = lanes
            .iter_mut()
            .map(|(s, _)| {
                let Seanet {
                    layers,
                    cur,
                    hidden,
                    ..
                } = &mut **s;
                let Layer::Res(a, _) = &mut layers[li] else {
                    unreachable!("streams of one model have the same layers")
                };
                elu(isa, &cur[..rows * a.c_in], a.input(rows));
                let out = grow(hidden, rows * a.c_out);
                (a, out)
            })
            .collect();
        t0 = prof.lap(Kind::Elu, t0);
        run_convs(isa, &mut first, false);
        drop(first);
        t0 = prof.lap(Kind::Conv, t0);
        let mut second: Batch<(&mut Conv, &mut [f32])> = lanes
            .iter_mut()
            .map(|(s, _)| {
                let Seanet {
                    layers,
                    cur,
                    hidden,
                    ..
                } = &mut **s;
                let Layer::Res(a, b) = &mut layers[li] else {
                    unreachable!("streams of one model have the same layers")
                };
                elu(isa, &hidden[..rows * a.c_out], b.input(rows));
                (b, &mut cur[..rows * a.c_in])
            })
            .collect();
        t0 = prof.lap(Kind::Elu, t0);
        run_convs(isa, &mut second, true);
        prof.lap(Kind::Conv, t0)
    }
}

/// Per-stream parts of one batched layer, on the stack up to [`MAX_JOBS`] streams.
type Batch<T> = smallvec::SmallVec<[T; MAX_JOBS]>;

/// The convolution of a `Conv` or `EluConv` layer.
fn conv_of(l: &mut Layer) -> &mut Conv {
    match l {
        Layer::Conv(c) | Layer::EluConv(c) => c,
        _ => unreachable!("streams of one model have the same layers"),
    }
}

/// Input channels of the stack.
fn first_c_in(s: &Seanet) -> usize {
    match s.layers.first() {
        Some(Layer::Conv(c) | Layer::EluConv(c)) => c.c_in,
        _ => 1,
    }
}
