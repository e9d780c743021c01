//! SEANet encoder and decoder (causal, constant padding, ELU, identity skips).

use candle_core::{Result, Tensor};

use super::config::SeanetConfig;
use super::conv::{elu, StreamConv1d, StreamConvTr1d};
use super::load::Vars;
use super::MimiError;

#[derive(Debug, Clone)]
enum Layer {
    Elu,
    Conv(StreamConv1d),
    ConvTr(StreamConvTr1d),
    /// `x + conv2(elu(conv1(elu(x))))`.
    Res(StreamConv1d, StreamConv1d),
}

/// A SEANet stack (encoder or decoder) with its streaming state.
#[derive(Debug, Clone)]
pub(crate) struct Seanet {
    layers: Vec<Layer>,
}

/// A causal conv `prefix.conv.conv.{weight,bias}` of `(out, in, kernel)`.
fn conv(
    v: &Vars,
    (o, i, k): (usize, usize, usize),
    stride: usize,
    dilation: usize,
    steps_out: usize,
) -> std::result::Result<StreamConv1d, MimiError> {
    let v = v.pp("conv.conv");
    let c = StreamConv1d::new(
        v.get("weight", &[o, i, k])?,
        Some(v.get("bias", &[o])?),
        stride,
        dilation,
        false,
        steps_out,
    )?;
    Ok(c)
}

/// The residual blocks at width `dim`, from `{prefix}.model.{idx}` on.
fn res_blocks(
    v: &Vars,
    cfg: &SeanetConfig,
    idx: &mut usize,
    dim: usize,
    layers: &mut Vec<Layer>,
    steps: usize,
) -> std::result::Result<(), MimiError> {
    let hidden = dim / cfg.compress;
    let k = cfg.residual_kernel_size;
    let mut dilation = 1;
    for _ in 0..cfg.n_residual_layers {
        let b = v.pp(format!("model.{idx}.block"));
        layers.push(Layer::Res(
            conv(&b.pp(1), (hidden, dim, k), 1, dilation, steps)?,
            conv(&b.pp(3), (dim, hidden, 1), 1, 1, steps)?,
        ));
        dilation *= cfg.dilation_base;
        *idx += 1;
    }
    Ok(())
}

impl Seanet {
    /// The encoder under `v` (`encoder`); `frame`: audio samples per streaming call.
    pub(crate) fn encoder(
        v: &Vars,
        cfg: &SeanetConfig,
        frame: usize,
    ) -> std::result::Result<Self, MimiError> {
        let nf = cfg.n_filters;
        let mut steps = frame;
        let first = (nf, cfg.channels, cfg.kernel_size);
        let mut layers = vec![Layer::Conv(conv(&v.pp("model.0"), first, 1, 1, steps)?)];
        let (mut idx, mut mult) = (1, 1);
        for &r in cfg.ratios.iter().rev() {
            res_blocks(v, cfg, &mut idx, mult * nf, &mut layers, steps)?;
            layers.push(Layer::Elu);
            idx += 1;
            steps /= r;
            let shape = (mult * nf * 2, mult * nf, 2 * r);
            let c = conv(&v.pp(format!("model.{idx}")), shape, r, 1, steps)?;
            layers.push(Layer::Conv(c));
            idx += 1;
            mult *= 2;
        }
        layers.push(Layer::Elu);
        idx += 1;
        let shape = (cfg.dimension, mult * nf, cfg.last_kernel_size);
        let c = conv(&v.pp(format!("model.{idx}")), shape, 1, 1, steps)?;
        layers.push(Layer::Conv(c));
        Ok(Self { layers })
    }

    /// The decoder under `v` (`decoder`); `steps`: latent steps per streaming call.
    pub(crate) fn decoder(
        v: &Vars,
        cfg: &SeanetConfig,
        mut steps: usize,
    ) -> std::result::Result<Self, MimiError> {
        let nf = cfg.n_filters;
        let mut mult = 1usize << cfg.ratios.len();
        let first = (mult * nf, cfg.dimension, cfg.kernel_size);
        let mut layers = vec![Layer::Conv(conv(&v.pp("model.0"), first, 1, 1, steps)?)];
        let mut idx = 1;
        for &r in &cfg.ratios {
            layers.push(Layer::Elu);
            idx += 1;
            let (c_in, c_out) = (mult * nf, mult * nf / 2);
            let t = v.pp(format!("model.{idx}.convtr.convtr"));
            layers.push(Layer::ConvTr(StreamConvTr1d::new(
                t.get("weight", &[c_in, c_out, 2 * r])?,
                Some(t.get("bias", &[c_out])?),
                r,
                false,
                steps,
            )?));
            idx += 1;
            steps *= r;
            res_blocks(v, cfg, &mut idx, c_out, &mut layers, steps)?;
            mult /= 2;
        }
        layers.push(Layer::Elu);
        idx += 1;
        let shape = (cfg.channels, nf, cfg.last_kernel_size);
        let c = conv(&v.pp(format!("model.{idx}")), shape, 1, 1, steps)?;
        layers.push(Layer::Conv(c));
        Ok(Self { layers })
    }

    pub(crate) fn reset(&mut self) {
        for l in &mut self.layers {
            match l {
                Layer::Elu => {}
                Layer::Conv(c) => c.reset(),
                Layer::ConvTr(c) => c.reset(),
                Layer::Res(a, b) => {
                    a.reset();
                    b.reset();
                }
            }
        }
    }

    /// Runs `[1, C, T]` through the stack, carrying state to the next call.
    pub(crate) fn step(&mut self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for l in &mut self.layers {
            x = match l {
                Layer::Elu => elu(&x)?,
                Layer::Conv(c) => c.step(&x)?,
                Layer::ConvTr(c) => c.step(&x)?,
                Layer::Res(a, b) => {
                    let h = a.step(&elu(&x)?)?;
                    let h = b.step(&elu(&h)?)?;
                    (x + h)?
                }
            };
        }
        Ok(x)
    }
}
