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

    /// Runs `[B, C, T]` through the stacks of several streams of one model (row `b` is
    /// `nets[b]`'s), each layer's weights read once for all of them.
    pub(crate) fn step_batch(nets: &mut [&mut Seanet], x: &Tensor) -> Result<Tensor> {
        let depth = nets.first().map_or(0, |n| n.layers.len());
        if nets.iter().any(|n| n.layers.len() != depth) {
            candle_core::bail!("a batched SEANet step over stacks of different depths");
        }
        let mut x = x.clone();
        for li in 0..depth {
            let mut layers: Vec<&mut Layer> = nets.iter_mut().map(|n| &mut n.layers[li]).collect();
            x = Layer::step_batch(&mut layers, &x)?;
        }
        Ok(x)
    }
}

impl Layer {
    /// One layer of every stream (all the same kind of layer, of one model).
    fn step_batch(layers: &mut [&mut Layer], x: &Tensor) -> Result<Tensor> {
        let n = layers.len();
        let (mut convs, mut trs, mut res1, mut res2) = (vec![], vec![], vec![], vec![]);
        let mut elu_layers = 0;
        for l in layers.iter_mut() {
            match &mut **l {
                Layer::Elu => elu_layers += 1,
                Layer::Conv(c) => convs.push(c),
                Layer::ConvTr(c) => trs.push(c),
                Layer::Res(a, b) => {
                    res1.push(a);
                    res2.push(b);
                }
            }
        }
        if elu_layers == n {
            elu(x)
        } else if convs.len() == n {
            StreamConv1d::step_batch(&mut convs, x)
        } else if trs.len() == n {
            StreamConvTr1d::step_batch(&mut trs, x)
        } else if res1.len() == n {
            let h = StreamConv1d::step_batch(&mut res1, &elu(x)?)?;
            let h = StreamConv1d::step_batch(&mut res2, &elu(&h)?)?;
            x + h
        } else {
            candle_core::bail!("a batched SEANet step over layers of different kinds")
        }
    }
}
