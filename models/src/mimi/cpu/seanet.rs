//! SEANet encoder and decoder on time-major buffers: each layer's ELU is written straight
//! into the next convolution's input slot, and a residual block adds into the stream in place.

use std::time::Instant;

use super::conv::{grow, Conv, ConvTr};
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

    /// Runs `x` (`[T, C_in]`, time-major) through the stack; returns the output `[T', C_out]`
    /// (valid until the next call).
    pub(crate) fn step(&mut self, isa: Isa, x: &[f32], prof: &mut Prof) -> &[f32] {
        let mut t0 = Instant::now();
        let mut rows = 0;
        let mut first = true;
        for l in &mut self.layers {
            let src: &[f32] = if first { x } else { &self.cur[..] };
            match l {
                Layer::Conv(c) => {
                    let ci = c.c_in;
                    let t = src.len() / ci;
                    c.input(t).copy_from_slice(&src[..t * ci]);
                    rows = c.t_out();
                    c.run(isa, grow(&mut self.next, rows * c.c_out), false);
                    t0 = prof.lap(Kind::Conv, t0);
                }
                Layer::EluConv(c) => {
                    let t = rows;
                    elu(isa, &src[..t * c.c_in], c.input(t));
                    t0 = prof.lap(Kind::Elu, t0);
                    rows = c.t_out();
                    c.run(isa, grow(&mut self.next, rows * c.c_out), false);
                    t0 = prof.lap(Kind::Conv, t0);
                }
                Layer::EluConvTr(c) => {
                    let t = rows;
                    elu(isa, &src[..t * c.c_in], c.input(t));
                    t0 = prof.lap(Kind::Elu, t0);
                    rows = c.t_out();
                    c.run(isa, grow(&mut self.next, rows * c.c_out));
                    t0 = prof.lap(Kind::ConvTr, t0);
                }
                Layer::Res(a, b) => {
                    let n = rows * a.c_in;
                    elu(isa, &self.cur[..n], a.input(rows));
                    t0 = prof.lap(Kind::Elu, t0);
                    a.run(isa, grow(&mut self.hidden, rows * a.c_out), false);
                    t0 = prof.lap(Kind::Conv, t0);
                    elu(isa, &self.hidden[..rows * a.c_out], b.input(rows));
                    t0 = prof.lap(Kind::Elu, t0);
                    b.run(isa, &mut self.cur[..n], true);
                    t0 = prof.lap(Kind::Conv, t0);
                    continue;
                }
            }
            first = false;
            std::mem::swap(&mut self.cur, &mut self.next);
        }
        let c = match self.layers.last() {
            Some(Layer::Conv(c) | Layer::EluConv(c)) => c.c_out,
            _ => self.channels,
        };
        &self.cur[..rows * c]
    }
}
