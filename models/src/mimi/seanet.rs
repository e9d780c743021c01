//! SEANet encoder and decoder (causal, constant padding, ELU, identity skips).

use candle_core::{Result, Tensor};

use super::config::SeanetConfig;
use super::conv::{elu, StreamConv1d, StreamConvTr1d};
use super::load::Weights;
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

fn conv(
    w: &Weights,
    p: &str,
    stride: usize,
    dilation: usize,
    steps_out: usize,
) -> std::result::Result<StreamConv1d, MimiError> {
    let c = StreamConv1d::new(
        w.get(&format!("{p}.conv.conv.weight"))?,
        Some(w.get(&format!("{p}.conv.conv.bias"))?),
        stride,
        dilation,
        false,
        steps_out,
    )?;
    Ok(c)
}

fn res_blocks(
    w: &Weights,
    cfg: &SeanetConfig,
    prefix: &str,
    idx: &mut usize,
    layers: &mut Vec<Layer>,
    steps: usize,
) -> std::result::Result<(), MimiError> {
    let mut dilation = 1;
    for _ in 0..cfg.n_residual_layers {
        let p = format!("{prefix}.model.{idx}.block");
        layers.push(Layer::Res(
            conv(w, &format!("{p}.1"), 1, dilation, steps)?,
            conv(w, &format!("{p}.3"), 1, 1, steps)?,
        ));
        dilation *= cfg.dilation_base;
        *idx += 1;
    }
    Ok(())
}

impl Seanet {
    /// `frame`: audio samples per streaming call.
    pub(crate) fn encoder(
        w: &Weights,
        cfg: &SeanetConfig,
        frame: usize,
    ) -> std::result::Result<Self, MimiError> {
        let mut steps = frame;
        let mut layers = vec![Layer::Conv(conv(w, "encoder.model.0", 1, 1, steps)?)];
        let mut idx = 1;
        for &r in cfg.ratios.iter().rev() {
            res_blocks(w, cfg, "encoder", &mut idx, &mut layers, steps)?;
            layers.push(Layer::Elu);
            idx += 1;
            steps /= r;
            let c = conv(w, &format!("encoder.model.{idx}"), r, 1, steps)?;
            layers.push(Layer::Conv(c));
            idx += 1;
        }
        layers.push(Layer::Elu);
        idx += 1;
        let c = conv(w, &format!("encoder.model.{idx}"), 1, 1, steps)?;
        layers.push(Layer::Conv(c));
        Ok(Self { layers })
    }

    /// `steps`: latent steps per streaming call.
    pub(crate) fn decoder(
        w: &Weights,
        cfg: &SeanetConfig,
        mut steps: usize,
    ) -> std::result::Result<Self, MimiError> {
        let mut layers = vec![Layer::Conv(conv(w, "decoder.model.0", 1, 1, steps)?)];
        let mut idx = 1;
        for &r in &cfg.ratios {
            layers.push(Layer::Elu);
            idx += 1;
            let p = format!("decoder.model.{idx}.convtr.convtr");
            layers.push(Layer::ConvTr(StreamConvTr1d::new(
                w.get(&format!("{p}.weight"))?,
                Some(w.get(&format!("{p}.bias"))?),
                r,
                false,
                steps,
            )?));
            idx += 1;
            steps *= r;
            res_blocks(w, cfg, "decoder", &mut idx, &mut layers, steps)?;
        }
        layers.push(Layer::Elu);
        idx += 1;
        let c = conv(w, &format!("decoder.model.{idx}"), 1, 1, steps)?;
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
