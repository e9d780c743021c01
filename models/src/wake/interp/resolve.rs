//! Load-time resolution of each operator: shapes checked, copy plans and index tables built,
//! weights and requantization parameters taken from the model.

use super::{bad, elem_size, Conv, Dense, Step};
use crate::wake::quant::{activation_range, multiply, quantize_multiplier};
use crate::wake::tflite::{
    code, dtype, op_name, ModelDef, OperatorDef, Options, SubgraphDef, TensorDef,
};
use crate::wake::WakeError;

type Io = (Vec<usize>, Vec<usize>);

/// Per-tensor scale and zero point of an 8-bit tensor.
fn q8(t: &TensorDef) -> Result<(f32, i32), WakeError> {
    if t.dtype != dtype::INT8 && t.dtype != dtype::UINT8 {
        return Err(bad(format!(
            "tensor {}: expected an 8-bit quantized tensor",
            t.name
        )));
    }
    match (t.quant.scales.first(), t.quant.zero_points.first()) {
        (Some(&s), Some(&zp)) if s > 0.0 && s.is_finite() => Ok((s, zp as i32)),
        _ => Err(bad(format!(
            "tensor {}: no quantization parameters",
            t.name
        ))),
    }
}

fn dims(t: &TensorDef) -> Vec<usize> {
    t.shape.iter().map(|&d| d.max(0) as usize).collect()
}

fn constant<'a>(model: &'a ModelDef, t: &TensorDef) -> Result<&'a [u8], WakeError> {
    match model.buffers.get(t.buffer) {
        Some(b) if !b.is_empty() => Ok(b),
        _ => Err(bad(format!("tensor {}: expected constant data", t.name))),
    }
}

fn const_i32s(model: &ModelDef, t: &TensorDef) -> Result<Vec<i32>, WakeError> {
    if t.dtype != dtype::INT32 {
        return Err(bad(format!("tensor {}: expected int32 data", t.name)));
    }
    let b = constant(model, t)?;
    Ok(b.chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn const_i8s(model: &ModelDef, t: &TensorDef) -> Result<Vec<i8>, WakeError> {
    if t.dtype != dtype::INT8 || t.quant.zero_points.iter().any(|&z| z != 0) {
        return Err(bad(format!(
            "tensor {}: expected symmetric int8 weights",
            t.name
        )));
    }
    Ok(constant(model, t)?.iter().map(|&b| b as i8).collect())
}

fn axis_of(axis: i32, rank: usize) -> Result<usize, WakeError> {
    let a = if axis < 0 { axis + rank as i32 } else { axis };
    usize::try_from(a)
        .ok()
        .filter(|&a| a < rank)
        .ok_or_else(|| bad(format!("axis {axis} out of range")))
}

/// RESHAPE: the same number of bytes on both sides.
pub(super) fn same_bytes(sg: &SubgraphDef, a: usize, b: usize) -> Result<(), WakeError> {
    let (ta, tb) = (&sg.tensors[a], &sg.tensors[b]);
    if ta.elements() * elem_size(ta)? != tb.elements() * elem_size(tb)? || ta.dtype != tb.dtype {
        return Err(bad(format!(
            "RESHAPE: {} and {} differ in size or type",
            ta.name, tb.name
        )));
    }
    Ok(())
}

fn same_quant(a: &TensorDef, b: &TensorDef) -> bool {
    a.dtype == b.dtype
        && a.quant.scales == b.quant.scales
        && a.quant.zero_points == b.quant.zero_points
}

pub(super) fn concat(
    sg: &SubgraphDef,
    op: &OperatorDef,
    (ins, outs): Io,
) -> Result<Step, WakeError> {
    let Options::Concatenation { axis, activation } = op.options else {
        return Err(bad("CONCATENATION without options"));
    };
    let out = &sg.tensors[outs[0]];
    let shape = dims(out);
    let axis = axis_of(axis, shape.len())?;
    if activation != 0 {
        return Err(bad("CONCATENATION with a fused activation"));
    }
    let outer: usize = shape[..axis].iter().product();
    let mut inputs = Vec::new();
    for &i in &ins {
        let t = &sg.tensors[i];
        if !same_quant(t, out) {
            return Err(bad(format!(
                "CONCATENATION: {} is quantized unlike its output",
                t.name
            )));
        }
        let d = dims(t);
        if d.len() != shape.len() || d[..axis] != shape[..axis] {
            return Err(bad(format!(
                "CONCATENATION: {} has an incompatible shape",
                t.name
            )));
        }
        inputs.push((i, d[axis..].iter().product::<usize>() * elem_size(t)?));
    }
    let total: usize = inputs.iter().map(|&(_, n)| n).sum();
    if total * outer != out.elements() * elem_size(out)? {
        return Err(bad("CONCATENATION: inputs do not add up to the output"));
    }
    Ok(Step::Concat {
        inputs,
        outer,
        output: outs[0],
    })
}

pub(super) fn split(
    model: &ModelDef,
    sg: &SubgraphDef,
    (ins, outs): Io,
) -> Result<Step, WakeError> {
    let input = &sg.tensors[ins[0]];
    let shape = dims(input);
    let axis = const_i32s(model, &sg.tensors[ins[2]])?;
    let axis = axis_of(
        *axis.first().ok_or_else(|| bad("SPLIT_V: no axis"))?,
        shape.len(),
    )?;
    let outer: usize = shape[..axis].iter().product();
    let mut outputs = Vec::new();
    for &o in &outs {
        let t = &sg.tensors[o];
        if !same_quant(t, input) {
            return Err(bad(format!(
                "SPLIT_V: {} is quantized unlike its input",
                t.name
            )));
        }
        outputs.push((o, dims(t)[axis..].iter().product::<usize>() * elem_size(t)?));
    }
    let total: usize = outputs.iter().map(|&(_, n)| n).sum();
    if total * outer != input.elements() * elem_size(input)? {
        return Err(bad("SPLIT_V: outputs do not add up to the input"));
    }
    Ok(Step::Split {
        input: ins[0],
        outputs,
        outer,
    })
}

pub(super) fn strided_slice(
    model: &ModelDef,
    sg: &SubgraphDef,
    op: &OperatorDef,
    (ins, outs): Io,
) -> Result<Step, WakeError> {
    let Options::StridedSlice {
        begin_mask,
        end_mask,
        ellipsis_mask,
        new_axis_mask,
        shrink_axis_mask,
        offset,
    } = op.options
    else {
        return Err(bad("STRIDED_SLICE without options"));
    };
    if ellipsis_mask != 0 || new_axis_mask != 0 || shrink_axis_mask != 0 || offset {
        return Err(bad(
            "STRIDED_SLICE: ellipsis, new-axis, shrink-axis masks and offset are not supported",
        ));
    }
    let (input, out) = (&sg.tensors[ins[0]], &sg.tensors[outs[0]]);
    if elem_size(input)? != 1 || !same_quant(input, out) {
        return Err(bad(
            "STRIDED_SLICE: only 8-bit tensors with the same quantization",
        ));
    }
    let shape = dims(input);
    let (begin, end, strides) = (
        const_i32s(model, &sg.tensors[ins[1]])?,
        const_i32s(model, &sg.tensors[ins[2]])?,
        const_i32s(model, &sg.tensors[ins[3]])?,
    );
    if begin.len() != shape.len() || end.len() != shape.len() || strides.len() != shape.len() {
        return Err(bad(
            "STRIDED_SLICE: begin, end and strides must match the input's rank",
        ));
    }
    let mut ranges = Vec::new();
    for d in 0..shape.len() {
        let n = shape[d] as i64;
        let stride = i64::from(strides[d]);
        if stride <= 0 {
            return Err(bad("STRIDED_SLICE: only positive strides are supported"));
        }
        let at = |v: i32, masked: bool, full: i64| -> i64 {
            if masked {
                return full;
            }
            let v = i64::from(v);
            (if v < 0 { v + n } else { v }).clamp(0, n)
        };
        let start = at(begin[d], begin_mask >> d & 1 == 1, 0);
        let stop = at(end[d], end_mask >> d & 1 == 1, n);
        ranges.push((start, stop, stride));
    }
    let index = gather_index(&shape, &ranges);
    if index.len() != out.elements() {
        return Err(bad(format!(
            "STRIDED_SLICE: {} elements selected for {}",
            index.len(),
            out.elements()
        )));
    }
    Ok(Step::Gather {
        input: ins[0],
        output: outs[0],
        index,
    })
}

/// Row-major input offsets of every element the ranges select.
fn gather_index(shape: &[usize], ranges: &[(i64, i64, i64)]) -> Vec<u32> {
    let mut index = vec![0u32];
    for (d, &(start, stop, stride)) in ranges.iter().enumerate() {
        let mut next = Vec::new();
        for &base in &index {
            let mut i = start;
            while i < stop {
                next.push(base * shape[d] as u32 + i as u32);
                i += stride;
            }
        }
        index = next;
    }
    index
}

fn out_size(
    padding: u8,
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
) -> (usize, usize) {
    let eff = (kernel - 1) * dilation + 1;
    if padding == 0 {
        let out = input.div_ceil(stride);
        let total = ((out - 1) * stride + eff).saturating_sub(input);
        (out, total / 2)
    } else {
        ((input + stride).saturating_sub(eff) / stride, 0)
    }
}

/// Per-output-channel requantization from the input, filter and output scales.
fn channel_requant(
    in_scale: f32,
    filter: &TensorDef,
    out_scale: f32,
    channels: usize,
) -> Result<Vec<(i32, i32)>, WakeError> {
    let scales = &filter.quant.scales;
    if scales.len() != 1 && scales.len() != channels {
        return Err(bad(format!(
            "tensor {}: {} scales for {channels} channels",
            filter.name,
            scales.len()
        )));
    }
    Ok((0..channels)
        .map(|c| {
            let fs = scales[if scales.len() == 1 { 0 } else { c }];
            quantize_multiplier(f64::from(in_scale) * f64::from(fs) / f64::from(out_scale))
        })
        .collect())
}

pub(super) fn conv(
    model: &ModelDef,
    sg: &SubgraphDef,
    op: &OperatorDef,
    (ins, outs): Io,
) -> Result<Conv, WakeError> {
    let name = op_name(op.code);
    let Options::Conv {
        padding,
        stride,
        dilation,
        activation,
        ..
    } = op.options
    else {
        return Err(bad(format!("{name} without options")));
    };
    let (input, filter, out) = (
        &sg.tensors[ins[0]],
        &sg.tensors[ins[1]],
        &sg.tensors[outs[0]],
    );
    let bias = ins
        .get(2)
        .map(|&b| &sg.tensors[b])
        .ok_or_else(|| bad(format!("{name} without bias")))?;
    let ((si, zi), (so, zo)) = (q8(input)?, q8(out)?);
    let (di, df, dout) = (dims(input), dims(filter), dims(out));
    if input.dtype != dtype::INT8
        || out.dtype != dtype::INT8
        || di.len() != 4
        || df.len() != 4
        || dout.len() != 4
        || di[0] != 1
    {
        return Err(bad(format!(
            "{name}: expected int8 NHWC tensors with one batch"
        )));
    }
    let depthwise = op.code == code::DEPTHWISE_CONV_2D;
    let oc = if depthwise { df[3] } else { df[0] };
    let mult = oc / di[3].max(1);
    if (depthwise && (df[0] != 1 || mult * di[3] != oc))
        || (!depthwise && df[3] != di[3])
        || dout[3] != oc
    {
        return Err(bad(format!(
            "{name}: filter shape {:?} does not fit input {:?}",
            df, di
        )));
    }
    let (s, d) = (
        (stride.0.max(1) as usize, stride.1.max(1) as usize),
        (dilation.0.max(1) as usize, dilation.1.max(1) as usize),
    );
    let (oh, ph) = out_size(padding, di[1], df[1], s.0, d.0);
    let (ow, pw) = out_size(padding, di[2], df[2], s.1, d.1);
    if (oh, ow) != (dout[1], dout[2]) {
        return Err(bad(format!(
            "{name}: output {:?} should be {oh}x{ow}",
            dout
        )));
    }
    let bias_vals = const_i32s(model, bias)?;
    if bias_vals.len() != oc {
        return Err(bad(format!(
            "{name}: {} biases for {oc} channels",
            bias_vals.len()
        )));
    }
    Ok(Conv {
        input: ins[0],
        output: outs[0],
        in_hwc: (di[1], di[2], di[3]),
        out_hwc: (oh, ow, oc),
        kernel: (df[1], df[2]),
        stride: s,
        dilation: d,
        pad: (ph, pw),
        depthwise: depthwise.then_some(mult),
        filter: const_i8s(model, filter)?,
        bias: bias_vals,
        requant: channel_requant(si, filter, so, oc)?,
        in_offset: -zi,
        out_offset: zo,
        clamp: activation_range(activation, so, zo, -128, 127)?,
    })
}

pub(super) fn dense(
    model: &ModelDef,
    sg: &SubgraphDef,
    op: &OperatorDef,
    (ins, outs): Io,
) -> Result<Dense, WakeError> {
    let Options::FullyConnected {
        activation,
        weights_format,
        ..
    } = op.options
    else {
        return Err(bad("FULLY_CONNECTED without options"));
    };
    let (input, filter, out) = (
        &sg.tensors[ins[0]],
        &sg.tensors[ins[1]],
        &sg.tensors[outs[0]],
    );
    let bias = ins
        .get(2)
        .map(|&b| &sg.tensors[b])
        .ok_or_else(|| bad("FULLY_CONNECTED without bias"))?;
    let ((si, zi), (so, zo)) = (q8(input)?, q8(out)?);
    let df = dims(filter);
    if input.dtype != dtype::INT8
        || out.dtype != dtype::INT8
        || df.len() != 2
        || weights_format != 0
    {
        return Err(bad(
            "FULLY_CONNECTED: expected int8 tensors and a 2-D default-format filter",
        ));
    }
    let (units, depth) = (df[0], df[1]);
    let batches = input.elements() / depth.max(1);
    if batches * depth != input.elements() || batches * units != out.elements() {
        return Err(bad("FULLY_CONNECTED: shapes do not fit"));
    }
    let scales = &filter.quant.scales;
    let requant = if scales.len() == 1 {
        // TFLite multiplies the two scales in f32 before widening, for a per-tensor filter.
        vec![quantize_multiplier(f64::from(si * scales[0]) / f64::from(so)); units]
    } else {
        channel_requant(si, filter, so, units)?
    };
    let bias = const_i32s(model, bias)?;
    if bias.len() != units {
        return Err(bad("FULLY_CONNECTED: bias size"));
    }
    Ok(Dense {
        input: ins[0],
        output: outs[0],
        batches,
        depth,
        units,
        filter: const_i8s(model, filter)?,
        bias,
        requant,
        in_offset: -zi,
        out_offset: zo,
        clamp: activation_range(activation, so, zo, -128, 127)?,
    })
}

/// The value an 8-bit tensor's byte stands for, as an integer.
fn byte_value(t: &TensorDef, b: u8) -> i32 {
    if t.dtype == dtype::INT8 {
        i32::from(b as i8)
    } else {
        i32::from(b)
    }
}

fn type_range(t: &TensorDef) -> (i32, i32) {
    if t.dtype == dtype::INT8 {
        (-128, 127)
    } else {
        (0, 255)
    }
}

/// LOGISTIC on 8 bits: a table of the float sigmoid, rounded, as TFLite's optimized kernel.
pub(super) fn logistic(sg: &SubgraphDef, (ins, outs): Io) -> Result<Step, WakeError> {
    let (input, out) = (&sg.tensors[ins[0]], &sg.tensors[outs[0]]);
    let ((si, zi), (so, zo)) = (q8(input)?, q8(out)?);
    let (lo, hi) = type_range(out);
    let mut table = Box::new([0u8; 256]);
    for b in 0..=255u8 {
        let x = si * (byte_value(input, b) - zi) as f32;
        let y = 1.0 / (1.0 + (-x).exp());
        let q = ((y * (1.0 / so)).round() + zo as f32) as i32;
        table[b as usize] = q.clamp(lo, hi) as u8;
    }
    Ok(Step::Lut {
        input: ins[0],
        output: outs[0],
        table,
    })
}

/// QUANTIZE between 8-bit types: a requantization table.
pub(super) fn quantize(sg: &SubgraphDef, (ins, outs): Io) -> Result<Step, WakeError> {
    let (input, out) = (&sg.tensors[ins[0]], &sg.tensors[outs[0]]);
    if input.dtype == dtype::FLOAT32 {
        return Err(bad(
            "QUANTIZE from float is not supported (the model's input must be 8-bit)",
        ));
    }
    let ((si, zi), (so, zo)) = (q8(input)?, q8(out)?);
    let (m, s) = quantize_multiplier(f64::from(si) / f64::from(so));
    let (lo, hi) = type_range(out);
    let mut table = Box::new([0u8; 256]);
    for b in 0..=255u8 {
        let q = multiply(byte_value(input, b) - zi, m, s) + zo;
        table[b as usize] = q.clamp(lo, hi) as u8;
    }
    Ok(Step::Lut {
        input: ins[0],
        output: outs[0],
        table,
    })
}
