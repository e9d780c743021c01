//! A small int8 interpreter for streaming microWakeWord models: the operators they use
//! (`CONV_2D`, `DEPTHWISE_CONV_2D`, `FULLY_CONNECTED`, `CONCATENATION`, `STRIDED_SLICE`,
//! `SPLIT_V`, `RESHAPE`, `LOGISTIC`, `QUANTIZE`, and the streaming state: `CALL_ONCE`,
//! `VAR_HANDLE`, `READ_VARIABLE`, `ASSIGN_VARIABLE`), with TensorFlow Lite's integer
//! arithmetic. A model with any other operator is refused with its name.
//!
//! Everything is resolved once at load: shapes, copy plans, requantization multipliers,
//! lookup tables and which variable each resource tensor names. Invoking allocates nothing.

use std::collections::HashMap;

use super::quant::{multiply, multiply_upward};
use super::tflite::{code, dtype, op_name, ModelDef, OperatorDef, Options, SubgraphDef, TensorDef};
use super::WakeError;

mod resolve;
use resolve as r;

fn bad(msg: impl Into<String>) -> WakeError {
    WakeError::BadModel(msg.into())
}

/// A convolution (regular or depthwise) with its weights and requantization.
#[derive(Debug)]
struct Conv {
    input: usize,
    output: usize,
    /// Input height, width, channels; output height, width, channels.
    in_hwc: (usize, usize, usize),
    out_hwc: (usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
    pad: (usize, usize),
    /// `Some(multiplier)` for a depthwise convolution.
    depthwise: Option<usize>,
    filter: Vec<i8>,
    bias: Vec<i32>,
    requant: Vec<(i32, i32)>,
    in_offset: i32,
    out_offset: i32,
    clamp: (i32, i32),
}

/// A fully connected layer: `units` outputs from `depth` inputs, `batches` times.
#[derive(Debug)]
struct Dense {
    input: usize,
    output: usize,
    batches: usize,
    depth: usize,
    units: usize,
    filter: Vec<i8>,
    bias: Vec<i32>,
    requant: Vec<(i32, i32)>,
    in_offset: i32,
    out_offset: i32,
    clamp: (i32, i32),
}

/// One resolved operator.
#[derive(Debug)]
enum Step {
    CallOnce(usize),
    Read {
        var: usize,
        output: usize,
    },
    Assign {
        var: usize,
        value: usize,
    },
    /// RESHAPE: the bytes unchanged.
    Copy {
        input: usize,
        output: usize,
    },
    /// CONCATENATION: `outer` rounds, each taking `bytes` from every input in turn.
    Concat {
        inputs: Vec<(usize, usize)>,
        outer: usize,
        output: usize,
    },
    /// SPLIT_V: `outer` rounds, each giving `bytes` to every output in turn.
    Split {
        input: usize,
        outputs: Vec<(usize, usize)>,
        outer: usize,
    },
    /// STRIDED_SLICE: output byte `i` is input byte `index[i]` (8-bit tensors).
    Gather {
        input: usize,
        output: usize,
        index: Vec<u32>,
    },
    Conv(Box<Conv>),
    Dense(Box<Dense>),
    /// LOGISTIC and 8-bit QUANTIZE: a 256-entry table indexed by the input byte.
    Lut {
        input: usize,
        output: usize,
        table: Box<[u8; 256]>,
    },
}

/// The streaming interpreter of one model.
pub struct Interpreter {
    plans: Vec<Vec<Step>>,
    /// Per subgraph, per tensor: its bytes (constants filled, activations zeroed).
    tensors: Vec<Vec<Vec<u8>>>,
    initial: Vec<Vec<Vec<u8>>>,
    vars: Vec<Option<Vec<u8>>>,
    called: Vec<bool>,
    input: TensorDef,
    output: TensorDef,
    input_index: usize,
    output_index: usize,
    acc: Vec<i32>,
}

impl Interpreter {
    /// Resolves a parsed model. The entry subgraph must have one 8-bit input and one output.
    pub fn new(model: &ModelDef) -> Result<Interpreter, WakeError> {
        let mut vars = HashMap::new();
        let mut plans = Vec::new();
        let mut tensors = Vec::new();
        for sg in &model.subgraphs {
            tensors.push(allocate(model, sg)?);
            let mut resources = HashMap::new();
            let plan = sg
                .operators
                .iter()
                .map(|op| resolve(model, sg, op, &mut vars, &mut resources))
                .collect::<Result<Vec<_>, _>>()?;
            plans.push(plan.into_iter().flatten().collect());
        }
        let main = &model.subgraphs[0];
        let (input_index, output_index) = match (main.inputs.as_slice(), main.outputs.as_slice()) {
            ([i], [o]) => (index(main, *i)?, index(main, *o)?),
            _ => return Err(bad("the model must have one input and one output")),
        };
        let (input, output) = (
            main.tensors[input_index].clone(),
            main.tensors[output_index].clone(),
        );
        if input.dtype != dtype::INT8 && input.dtype != dtype::UINT8 {
            return Err(bad("the model's input is not 8-bit quantized"));
        }
        if output.dtype != dtype::INT8 && output.dtype != dtype::UINT8 {
            return Err(bad("the model's output is not 8-bit quantized"));
        }
        let n = plans.len();
        Ok(Interpreter {
            plans,
            initial: tensors.clone(),
            tensors,
            vars: vec![None; vars.len()],
            called: vec![false; n],
            input,
            output,
            input_index,
            output_index,
            acc: Vec::new(),
        })
    }

    /// The input tensor (shape, type, quantization).
    pub fn input(&self) -> &TensorDef {
        &self.input
    }

    /// The output tensor (shape, type, quantization).
    pub fn output(&self) -> &TensorDef {
        &self.output
    }

    /// The input's bytes, to fill before [`Interpreter::invoke`].
    pub fn input_bytes(&mut self) -> &mut [u8] {
        &mut self.tensors[0][self.input_index]
    }

    /// The output's bytes after [`Interpreter::invoke`].
    pub fn output_bytes(&self) -> &[u8] {
        &self.tensors[0][self.output_index]
    }

    /// The bytes of tensor `index` of the entry subgraph (for tests and diagnosis).
    #[doc(hidden)]
    pub fn tensor_bytes(&self, index: usize) -> Option<&[u8]> {
        self.tensors[0].get(index).map(|t| t.as_slice())
    }

    /// Forgets the streaming state: variables are initialised again on the next invoke.
    pub fn reset(&mut self) {
        self.tensors.clone_from(&self.initial);
        self.vars.iter_mut().for_each(|v| *v = None);
        self.called.iter_mut().for_each(|c| *c = false);
    }

    /// Runs the entry subgraph once.
    pub fn invoke(&mut self) -> Result<(), WakeError> {
        self.run(0)
    }

    fn run(&mut self, g: usize) -> Result<(), WakeError> {
        let plans = std::mem::take(&mut self.plans);
        let result = run_plan(self, &plans, g);
        self.plans = plans;
        result
    }

    fn step(&mut self, plans: &[Vec<Step>], g: usize, step: &Step) -> Result<(), WakeError> {
        if let Step::CallOnce(sub) = step {
            if !self.called[*sub] {
                self.called[*sub] = true;
                run_plan(self, plans, *sub)?;
            }
            return Ok(());
        }
        let ts = &mut self.tensors[g];
        match step {
            Step::Read { var, output } => {
                let v = self.vars[*var]
                    .as_ref()
                    .ok_or_else(|| bad("variable read before assignment"))?;
                if v.len() != ts[*output].len() {
                    return Err(bad("variable read with another size than assigned"));
                }
                ts[*output].copy_from_slice(v);
            }
            Step::Assign { var, value } => {
                let slot = self.vars[*var].get_or_insert_with(Vec::new);
                slot.clear();
                slot.extend_from_slice(&ts[*value]);
            }
            _ => data_step(ts, &mut self.acc, step),
        }
        Ok(())
    }
}

/// Runs subgraph `g` of `plans` (used for CALL_ONCE, while the interpreter's own plans are out).
fn run_plan(it: &mut Interpreter, plans: &[Vec<Step>], g: usize) -> Result<(), WakeError> {
    plans[g].iter().try_for_each(|step| it.step(plans, g, step))
}

/// The operators that only read and write tensors.
fn data_step(ts: &mut [Vec<u8>], acc: &mut Vec<i32>, step: &Step) {
    match step {
        Step::Copy { input, output } => {
            with_out(ts, *output, |ts, out| out.copy_from_slice(&ts[*input]))
        }
        Step::Concat {
            inputs,
            outer,
            output,
        } => with_out(ts, *output, |ts, out| {
            let mut o = 0;
            for r in 0..*outer {
                for &(t, n) in inputs {
                    out[o..o + n].copy_from_slice(&ts[t][r * n..(r + 1) * n]);
                    o += n;
                }
            }
        }),
        Step::Split {
            input,
            outputs,
            outer,
        } => {
            let src = std::mem::take(&mut ts[*input]);
            let mut i = 0;
            for r in 0..*outer {
                for &(t, n) in outputs {
                    ts[t][r * n..(r + 1) * n].copy_from_slice(&src[i..i + n]);
                    i += n;
                }
            }
            ts[*input] = src;
        }
        Step::Gather {
            input,
            output,
            index,
        } => with_out(ts, *output, |ts, out| {
            let src = &ts[*input];
            for (o, &i) in out.iter_mut().zip(index) {
                *o = src[i as usize];
            }
        }),
        Step::Lut {
            input,
            output,
            table,
        } => with_out(ts, *output, |ts, out| {
            for (o, &i) in out.iter_mut().zip(&ts[*input]) {
                *o = table[i as usize];
            }
        }),
        Step::Conv(c) => with_out(ts, c.output, |ts, out| conv(c, &ts[c.input], out, acc)),
        Step::Dense(d) => with_out(ts, d.output, |ts, out| dense(d, &ts[d.input], out)),
        Step::CallOnce(_) | Step::Read { .. } | Step::Assign { .. } => {}
    }
}

/// Lends tensor `o` mutably beside the others (an output is never its own input: checked at load).
fn with_out(ts: &mut [Vec<u8>], o: usize, f: impl FnOnce(&[Vec<u8>], &mut [u8])) {
    let mut out = std::mem::take(&mut ts[o]);
    f(ts, &mut out);
    ts[o] = out;
}

/// Scales an accumulator to the output, rounding as TFLite's optimized kernels do (found
/// equal on every tensor of the four models): CONV_2D and FULLY_CONNECTED with
/// `MultiplyByQuantizedMultiplier` (rounding twice, ties away from zero), DEPTHWISE_CONV_2D
/// with its last shift's ties rounded upward.
fn requantize(
    acc: i32,
    (m, s): (i32, i32),
    depthwise: bool,
    offset: i32,
    (lo, hi): (i32, i32),
) -> u8 {
    let v = if depthwise {
        multiply_upward(acc, m, s)
    } else {
        multiply(acc, m, s)
    };
    (v + offset).clamp(lo, hi) as i8 as u8
}

fn conv(c: &Conv, input: &[u8], out: &mut [u8], acc: &mut Vec<i32>) {
    let (ih, iw, ic) = c.in_hwc;
    let (oh, ow, oc) = c.out_hwc;
    let (kh, kw) = c.kernel;
    acc.resize(oc, 0);
    for oy in 0..oh {
        for ox in 0..ow {
            acc.copy_from_slice(&c.bias);
            for ky in 0..kh {
                let iy = (oy * c.stride.0 + ky * c.dilation.0) as isize - c.pad.0 as isize;
                if iy < 0 || iy >= ih as isize {
                    continue;
                }
                for kx in 0..kw {
                    let ix = (ox * c.stride.1 + kx * c.dilation.1) as isize - c.pad.1 as isize;
                    if ix < 0 || ix >= iw as isize {
                        continue;
                    }
                    let at = (iy as usize * iw + ix as usize) * ic;
                    let x = &input[at..at + ic];
                    conv_tap(c, x, ky * kw + kx, acc);
                }
            }
            let o = (oy * ow + ox) * oc;
            for (ch, v) in out[o..o + oc].iter_mut().enumerate() {
                *v = requantize(
                    acc[ch],
                    c.requant[ch],
                    c.depthwise.is_some(),
                    c.out_offset,
                    c.clamp,
                );
            }
        }
    }
}

/// Adds one kernel tap's products to the accumulators.
fn conv_tap(c: &Conv, x: &[u8], tap: usize, acc: &mut [i32]) {
    let (kh, kw) = c.kernel;
    let ic = x.len();
    match c.depthwise {
        Some(mult) => {
            let oc = acc.len();
            let f = &c.filter[tap * oc..(tap + 1) * oc];
            for (o, (a, &w)) in acc.iter_mut().zip(f).enumerate() {
                *a += i32::from(w) * (i32::from(x[o / mult] as i8) + c.in_offset);
            }
        }
        None => {
            let per_out = kh * kw * ic;
            for (o, a) in acc.iter_mut().enumerate() {
                let f = &c.filter[o * per_out + tap * ic..o * per_out + (tap + 1) * ic];
                let mut s = 0i32;
                for (&w, &v) in f.iter().zip(x) {
                    s += i32::from(w) * (i32::from(v as i8) + c.in_offset);
                }
                *a += s;
            }
        }
    }
}

fn dense(d: &Dense, input: &[u8], out: &mut [u8]) {
    for b in 0..d.batches {
        let x = &input[b * d.depth..(b + 1) * d.depth];
        for u in 0..d.units {
            let w = &d.filter[u * d.depth..(u + 1) * d.depth];
            let mut s = d.bias[u];
            for (&wi, &xi) in w.iter().zip(x) {
                s += i32::from(wi) * (i32::from(xi as i8) + d.in_offset);
            }
            out[b * d.units + u] = requantize(s, d.requant[u], false, d.out_offset, d.clamp);
        }
    }
}

fn elem_size(t: &TensorDef) -> Result<usize, WakeError> {
    match t.dtype {
        dtype::INT8 | dtype::UINT8 => Ok(1),
        dtype::INT32 | dtype::FLOAT32 => Ok(4),
        dtype::RESOURCE => Ok(0),
        other => Err(bad(format!(
            "tensor {}: type {other} is not supported",
            t.name
        ))),
    }
}

/// Every tensor's bytes: a constant's data, else zeros.
fn allocate(model: &ModelDef, sg: &SubgraphDef) -> Result<Vec<Vec<u8>>, WakeError> {
    sg.tensors
        .iter()
        .map(|t| {
            let n = t.elements() * elem_size(t)?;
            match model.buffers.get(t.buffer) {
                Some(b) if !b.is_empty() => {
                    if b.len() != n {
                        return Err(bad(format!(
                            "tensor {}: {} bytes of data for {n}",
                            t.name,
                            b.len()
                        )));
                    }
                    Ok(b.clone())
                }
                Some(_) => Ok(vec![0; n]),
                None => Err(bad(format!("tensor {}: buffer index out of range", t.name))),
            }
        })
        .collect()
}

fn index(sg: &SubgraphDef, i: i32) -> Result<usize, WakeError> {
    usize::try_from(i)
        .ok()
        .filter(|&i| i < sg.tensors.len())
        .ok_or_else(|| bad(format!("tensor index {i} out of range")))
}

/// The operator's tensors, checked: `n_in` inputs (at least), `n_out` outputs (at least).
fn io(
    sg: &SubgraphDef,
    op: &OperatorDef,
    n_in: usize,
    n_out: usize,
) -> Result<(Vec<usize>, Vec<usize>), WakeError> {
    let name = op_name(op.code);
    if op.inputs.len() < n_in || op.outputs.len() < n_out {
        return Err(bad(format!("{name}: too few inputs or outputs")));
    }
    let ins = op
        .inputs
        .iter()
        .map(|&i| index(sg, i))
        .collect::<Result<Vec<_>, _>>()?;
    let outs = op
        .outputs
        .iter()
        .map(|&i| index(sg, i))
        .collect::<Result<Vec<_>, _>>()?;
    if outs.iter().any(|o| ins.contains(o)) {
        return Err(bad(format!("{name}: an output is also an input")));
    }
    Ok((ins, outs))
}

/// Resolves one operator into a step (`None` for VAR_HANDLE, resolved statically).
fn resolve(
    model: &ModelDef,
    sg: &SubgraphDef,
    op: &OperatorDef,
    vars: &mut HashMap<(String, String), usize>,
    resources: &mut HashMap<usize, usize>,
) -> Result<Option<Step>, WakeError> {
    let step = match op.code {
        code::CALL_ONCE => match op.options {
            Options::CallOnce { init_subgraph } => {
                let s = usize::try_from(init_subgraph)
                    .ok()
                    .filter(|&s| s > 0 && s < model.subgraphs.len());
                Step::CallOnce(s.ok_or_else(|| bad("CALL_ONCE: bad subgraph index"))?)
            }
            _ => return Err(bad("CALL_ONCE without options")),
        },
        code::VAR_HANDLE => {
            let (_, outs) = io(sg, op, 0, 1)?;
            let Options::VarHandle {
                container,
                shared_name,
            } = &op.options
            else {
                return Err(bad("VAR_HANDLE without options"));
            };
            let n = vars.len();
            let id = *vars
                .entry((container.clone(), shared_name.clone()))
                .or_insert(n);
            resources.insert(outs[0], id);
            return Ok(None);
        }
        code::READ_VARIABLE | code::ASSIGN_VARIABLE => {
            let (ins, outs) = io(
                sg,
                op,
                if op.code == code::READ_VARIABLE { 1 } else { 2 },
                0,
            )?;
            let var = *resources
                .get(&ins[0])
                .ok_or_else(|| bad("variable used before VAR_HANDLE"))?;
            if op.code == code::READ_VARIABLE {
                let output = *outs
                    .first()
                    .ok_or_else(|| bad("READ_VARIABLE without output"))?;
                Step::Read { var, output }
            } else {
                Step::Assign { var, value: ins[1] }
            }
        }
        code::RESHAPE => {
            let (ins, outs) = io(sg, op, 1, 1)?;
            r::same_bytes(sg, ins[0], outs[0])?;
            Step::Copy {
                input: ins[0],
                output: outs[0],
            }
        }
        code::CONCATENATION => r::concat(sg, op, io(sg, op, 1, 1)?)?,
        code::SPLIT_V => r::split(model, sg, io(sg, op, 3, 1)?)?,
        code::STRIDED_SLICE => r::strided_slice(model, sg, op, io(sg, op, 4, 1)?)?,
        code::CONV_2D | code::DEPTHWISE_CONV_2D => {
            Step::Conv(Box::new(r::conv(model, sg, op, io(sg, op, 2, 1)?)?))
        }
        code::FULLY_CONNECTED => Step::Dense(Box::new(r::dense(model, sg, op, io(sg, op, 2, 1)?)?)),
        code::LOGISTIC => r::logistic(sg, io(sg, op, 1, 1)?)?,
        code::QUANTIZE => r::quantize(sg, io(sg, op, 1, 1)?)?,
        other => return Err(WakeError::UnsupportedOperator(op_name(other))),
    };
    Ok(Some(step))
}
