//! A reader for the TensorFlow Lite flatbuffer (`.tflite`), for exactly the fields the
//! wake-word interpreter needs: subgraphs, tensors (shape, type, buffer, quantization),
//! operators (code, inputs, outputs, the options of the supported operators) and buffers.
//!
//! Hand-written against the published schema (`schema.fbs`, field ids in the comments):
//! every offset is bounds-checked, so a truncated or corrupt file is an error, never a panic.
//! (Checked on crates.io: `tflite` binds the C++ library, `tract-tflite` brings tract's whole
//! runtime without the resource-variable operators; neither fits.)

use super::WakeError;

/// Builtin operator names, indexed by code (from the schema's `BuiltinOperator` enum).
const OP_NAMES: &[&str] = &[
    "ADD",
    "AVERAGE_POOL_2D",
    "CONCATENATION",
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "DEPTH_TO_SPACE",
    "DEQUANTIZE",
    "EMBEDDING_LOOKUP",
    "FLOOR",
    "FULLY_CONNECTED",
    "HASHTABLE_LOOKUP",
    "L2_NORMALIZATION",
    "L2_POOL_2D",
    "LOCAL_RESPONSE_NORMALIZATION",
    "LOGISTIC",
    "LSH_PROJECTION",
    "LSTM",
    "MAX_POOL_2D",
    "MUL",
    "RELU",
    "RELU_N1_TO_1",
    "RELU6",
    "RESHAPE",
    "RESIZE_BILINEAR",
    "RNN",
    "SOFTMAX",
    "SPACE_TO_DEPTH",
    "SVDF",
    "TANH",
    "CONCAT_EMBEDDINGS",
    "SKIP_GRAM",
    "CALL",
    "CUSTOM",
    "EMBEDDING_LOOKUP_SPARSE",
    "PAD",
    "UNIDIRECTIONAL_SEQUENCE_RNN",
    "GATHER",
    "BATCH_TO_SPACE_ND",
    "SPACE_TO_BATCH_ND",
    "TRANSPOSE",
    "MEAN",
    "SUB",
    "DIV",
    "SQUEEZE",
    "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "STRIDED_SLICE",
    "BIDIRECTIONAL_SEQUENCE_RNN",
    "EXP",
    "TOPK_V2",
    "SPLIT",
    "LOG_SOFTMAX",
    "DELEGATE",
    "BIDIRECTIONAL_SEQUENCE_LSTM",
    "CAST",
    "PRELU",
    "MAXIMUM",
    "ARG_MAX",
    "MINIMUM",
    "LESS",
    "NEG",
    "PADV2",
    "GREATER",
    "GREATER_EQUAL",
    "LESS_EQUAL",
    "SELECT",
    "SLICE",
    "SIN",
    "TRANSPOSE_CONV",
    "SPARSE_TO_DENSE",
    "TILE",
    "EXPAND_DIMS",
    "EQUAL",
    "NOT_EQUAL",
    "LOG",
    "SUM",
    "SQRT",
    "RSQRT",
    "SHAPE",
    "POW",
    "ARG_MIN",
    "FAKE_QUANT",
    "REDUCE_PROD",
    "REDUCE_MAX",
    "PACK",
    "LOGICAL_OR",
    "ONE_HOT",
    "LOGICAL_AND",
    "LOGICAL_NOT",
    "UNPACK",
    "REDUCE_MIN",
    "FLOOR_DIV",
    "REDUCE_ANY",
    "SQUARE",
    "ZEROS_LIKE",
    "FILL",
    "FLOOR_MOD",
    "RANGE",
    "RESIZE_NEAREST_NEIGHBOR",
    "LEAKY_RELU",
    "SQUARED_DIFFERENCE",
    "MIRROR_PAD",
    "ABS",
    "SPLIT_V",
    "UNIQUE",
    "CEIL",
    "REVERSE_V2",
    "ADD_N",
    "GATHER_ND",
    "COS",
    "WHERE",
    "RANK",
    "ELU",
    "REVERSE_SEQUENCE",
    "MATRIX_DIAG",
    "QUANTIZE",
    "MATRIX_SET_DIAG",
    "ROUND",
    "HARD_SWISH",
    "IF",
    "WHILE",
    "NON_MAX_SUPPRESSION_V4",
    "NON_MAX_SUPPRESSION_V5",
    "SCATTER_ND",
    "SELECT_V2",
    "DENSIFY",
    "SEGMENT_SUM",
    "BATCH_MATMUL",
    "PLACEHOLDER_FOR_GREATER_OP_CODES",
    "CUMSUM",
    "CALL_ONCE",
    "BROADCAST_TO",
    "RFFT2D",
    "CONV_3D",
    "IMAG",
    "REAL",
    "COMPLEX_ABS",
    "HASHTABLE",
    "HASHTABLE_FIND",
    "HASHTABLE_IMPORT",
    "HASHTABLE_SIZE",
    "REDUCE_ALL",
    "CONV_3D_TRANSPOSE",
    "VAR_HANDLE",
    "READ_VARIABLE",
    "ASSIGN_VARIABLE",
    "BROADCAST_ARGS",
    "RANDOM_STANDARD_NORMAL",
    "BUCKETIZE",
    "RANDOM_UNIFORM",
    "MULTINOMIAL",
    "GELU",
    "DYNAMIC_UPDATE_SLICE",
    "RELU_0_TO_1",
    "UNSORTED_SEGMENT_PROD",
    "UNSORTED_SEGMENT_MAX",
    "UNSORTED_SEGMENT_SUM",
    "ATAN2",
    "UNSORTED_SEGMENT_MIN",
    "SIGN",
    "BITCAST",
    "BITWISE_XOR",
    "RIGHT_SHIFT",
    "STABLEHLO_LOGISTIC",
    "STABLEHLO_ADD",
    "STABLEHLO_DIVIDE",
    "STABLEHLO_MULTIPLY",
    "STABLEHLO_MAXIMUM",
    "STABLEHLO_RESHAPE",
    "STABLEHLO_CLAMP",
    "STABLEHLO_CONCATENATE",
    "STABLEHLO_BROADCAST_IN_DIM",
    "STABLEHLO_CONVOLUTION",
    "STABLEHLO_SLICE",
    "STABLEHLO_CUSTOM_CALL",
    "STABLEHLO_REDUCE",
    "STABLEHLO_ABS",
    "STABLEHLO_AND",
    "STABLEHLO_COSINE",
    "STABLEHLO_EXPONENTIAL",
    "STABLEHLO_FLOOR",
    "STABLEHLO_LOG",
    "STABLEHLO_MINIMUM",
    "STABLEHLO_NEGATE",
    "STABLEHLO_OR",
    "STABLEHLO_POWER",
    "STABLEHLO_REMAINDER",
    "STABLEHLO_RSQRT",
    "STABLEHLO_SELECT",
    "STABLEHLO_SUBTRACT",
    "STABLEHLO_TANH",
    "STABLEHLO_SCATTER",
    "STABLEHLO_COMPARE",
    "STABLEHLO_CONVERT",
    "STABLEHLO_DYNAMIC_SLICE",
    "STABLEHLO_DYNAMIC_UPDATE_SLICE",
    "STABLEHLO_PAD",
    "STABLEHLO_IOTA",
    "STABLEHLO_DOT_GENERAL",
    "STABLEHLO_REDUCE_WINDOW",
    "STABLEHLO_SORT",
    "STABLEHLO_WHILE",
    "STABLEHLO_GATHER",
    "STABLEHLO_TRANSPOSE",
    "DILATE",
    "STABLEHLO_RNG_BIT_GENERATOR",
    "REDUCE_WINDOW",
    "STABLEHLO_COMPOSITE",
    "STABLEHLO_SHIFT_LEFT",
    "STABLEHLO_CBRT",
];

/// The name of a builtin operator code, as the schema spells it.
pub fn op_name(code: i32) -> String {
    usize::try_from(code)
        .ok()
        .and_then(|c| OP_NAMES.get(c))
        .filter(|n| !n.is_empty())
        .map(|n| n.to_string())
        .unwrap_or_else(|| format!("BUILTIN_{code}"))
}

/// Builtin codes of the operators the interpreter runs.
pub mod code {
    pub const CONCATENATION: i32 = 2;
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const LOGISTIC: i32 = 14;
    pub const RESHAPE: i32 = 22;
    pub const STRIDED_SLICE: i32 = 45;
    pub const SPLIT_V: i32 = 102;
    pub const QUANTIZE: i32 = 114;
    pub const CALL_ONCE: i32 = 129;
    pub const VAR_HANDLE: i32 = 142;
    pub const READ_VARIABLE: i32 = 143;
    pub const ASSIGN_VARIABLE: i32 = 144;
}

/// Tensor element types (schema `TensorType`) the interpreter handles.
pub mod dtype {
    pub const FLOAT32: u8 = 0;
    pub const INT32: u8 = 2;
    pub const UINT8: u8 = 3;
    pub const INT8: u8 = 9;
    pub const RESOURCE: u8 = 13;
}

fn bad(what: &str) -> WakeError {
    WakeError::BadModel(what.to_string())
}

/// A table inside the buffer: its position and its vtable's.
#[derive(Clone, Copy)]
struct Table<'a> {
    buf: &'a [u8],
    pos: usize,
    vtable: usize,
    vtable_len: usize,
}

fn read<const N: usize>(buf: &[u8], pos: usize) -> Result<[u8; N], WakeError> {
    pos.checked_add(N)
        .and_then(|end| buf.get(pos..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("offset out of the file"))
}

fn u32_at(buf: &[u8], pos: usize) -> Result<u32, WakeError> {
    read::<4>(buf, pos).map(u32::from_le_bytes)
}

/// Follows a `uoffset` stored at `pos`.
fn deref(buf: &[u8], pos: usize) -> Result<usize, WakeError> {
    let off = u32_at(buf, pos)? as usize;
    pos.checked_add(off).ok_or_else(|| bad("offset overflow"))
}

impl<'a> Table<'a> {
    fn at(buf: &'a [u8], pos: usize) -> Result<Table<'a>, WakeError> {
        let soff = i32::from_le_bytes(read::<4>(buf, pos)?);
        let vtable = (pos as i64 - i64::from(soff)) as usize;
        let vt_size = u16::from_le_bytes(read::<2>(buf, vtable)?) as usize;
        if vt_size < 4 {
            return Err(bad("vtable too short"));
        }
        read::<2>(buf, vtable + vt_size - 2)?;
        Ok(Table {
            buf,
            pos,
            vtable,
            vtable_len: (vt_size - 4) / 2,
        })
    }

    /// Where field `id` lives, if present.
    fn field(&self, id: usize) -> Result<Option<usize>, WakeError> {
        if id >= self.vtable_len {
            return Ok(None);
        }
        let off = u16::from_le_bytes(read::<2>(self.buf, self.vtable + 4 + 2 * id)?) as usize;
        Ok((off != 0).then_some(self.pos + off))
    }

    fn scalar<const N: usize>(&self, id: usize) -> Result<Option<[u8; N]>, WakeError> {
        self.field(id)?.map(|p| read::<N>(self.buf, p)).transpose()
    }

    fn u8(&self, id: usize, default: u8) -> Result<u8, WakeError> {
        Ok(self.scalar::<1>(id)?.map_or(default, |b| b[0]))
    }

    fn i32(&self, id: usize, default: i32) -> Result<i32, WakeError> {
        Ok(self.scalar::<4>(id)?.map_or(default, i32::from_le_bytes))
    }

    fn u64(&self, id: usize) -> Result<u64, WakeError> {
        Ok(self.scalar::<8>(id)?.map_or(0, u64::from_le_bytes))
    }

    fn table(&self, id: usize) -> Result<Option<Table<'a>>, WakeError> {
        match self.field(id)? {
            Some(p) => Ok(Some(Table::at(self.buf, deref(self.buf, p)?)?)),
            None => Ok(None),
        }
    }

    /// A vector: position of its first element and its length (`elem` bytes each, checked).
    fn vector(&self, id: usize, elem: usize) -> Result<Option<(usize, usize)>, WakeError> {
        let Some(p) = self.field(id)? else {
            return Ok(None);
        };
        let start = deref(self.buf, p)?;
        let len = u32_at(self.buf, start)? as usize;
        let end = len
            .checked_mul(elem)
            .and_then(|b| b.checked_add(start + 4))
            .ok_or_else(|| bad("vector too long"))?;
        if end > self.buf.len() {
            return Err(bad("vector out of the file"));
        }
        Ok(Some((start + 4, len)))
    }

    fn bytes(&self, id: usize) -> Result<&'a [u8], WakeError> {
        Ok(self
            .vector(id, 1)?
            .map_or(&[][..], |(s, n)| &self.buf[s..s + n]))
    }

    fn string(&self, id: usize) -> Result<String, WakeError> {
        Ok(String::from_utf8_lossy(self.bytes(id)?).into_owned())
    }

    fn i32s(&self, id: usize) -> Result<Vec<i32>, WakeError> {
        let b = self
            .vector(id, 4)?
            .map_or(&[][..], |(s, n)| &self.buf[s..s + 4 * n]);
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn f32s(&self, id: usize) -> Result<Vec<f32>, WakeError> {
        Ok(self
            .i32s(id)?
            .into_iter()
            .map(|v| f32::from_bits(v as u32))
            .collect())
    }

    fn i64s(&self, id: usize) -> Result<Vec<i64>, WakeError> {
        let b = self
            .vector(id, 8)?
            .map_or(&[][..], |(s, n)| &self.buf[s..s + 8 * n]);
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
            .collect())
    }

    fn tables(&self, id: usize) -> Result<Vec<Table<'a>>, WakeError> {
        let Some((s, n)) = self.vector(id, 4)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|i| Table::at(self.buf, deref(self.buf, s + 4 * i)?))
            .collect()
    }
}

/// A tensor's quantization: per-tensor (one scale) or per-channel along `dimension`.
#[derive(Debug, Clone, Default)]
pub struct Quant {
    /// Scales (empty when the tensor is not quantized).
    pub scales: Vec<f32>,
    /// Zero points, one per scale.
    pub zero_points: Vec<i64>,
    /// The channel dimension of per-channel quantization.
    pub dimension: i32,
}

/// One tensor of a subgraph.
#[derive(Debug, Clone)]
pub struct TensorDef {
    /// Its name in the model (for messages).
    pub name: String,
    /// Static shape.
    pub shape: Vec<i32>,
    /// Element type (schema `TensorType`, see [`dtype`]).
    pub dtype: u8,
    /// Index into the model's buffers (constant data when that buffer is not empty).
    pub buffer: usize,
    /// Quantization parameters.
    pub quant: Quant,
}

impl TensorDef {
    /// Number of elements.
    pub fn elements(&self) -> usize {
        self.shape.iter().map(|&d| d.max(0) as usize).product()
    }
}

/// The options of the supported operators (schema `BuiltinOptions`).
#[derive(Debug, Clone)]
pub enum Options {
    /// No options table.
    None,
    /// CONV_2D and DEPTHWISE_CONV_2D (depth multiplier 1 for CONV_2D).
    Conv {
        /// 0 = SAME, 1 = VALID.
        padding: u8,
        stride: (i32, i32),
        dilation: (i32, i32),
        depth_multiplier: i32,
        activation: u8,
    },
    /// FULLY_CONNECTED.
    FullyConnected {
        activation: u8,
        weights_format: u8,
        keep_num_dims: bool,
    },
    /// CONCATENATION.
    Concatenation { axis: i32, activation: u8 },
    /// STRIDED_SLICE.
    StridedSlice {
        begin_mask: i32,
        end_mask: i32,
        ellipsis_mask: i32,
        new_axis_mask: i32,
        shrink_axis_mask: i32,
        offset: bool,
    },
    /// CALL_ONCE.
    CallOnce { init_subgraph: i32 },
    /// VAR_HANDLE.
    VarHandle {
        container: String,
        shared_name: String,
    },
}

/// One operator of a subgraph.
#[derive(Debug, Clone)]
pub struct OperatorDef {
    /// Builtin code (see [`code`]); custom operators are refused at parse time.
    pub code: i32,
    /// Input tensor indices (-1: absent optional input).
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
    /// Parsed options.
    pub options: Options,
}

/// One subgraph.
#[derive(Debug, Clone)]
pub struct SubgraphDef {
    /// Its tensors.
    pub tensors: Vec<TensorDef>,
    /// Input tensor indices.
    pub inputs: Vec<i32>,
    /// Output tensor indices.
    pub outputs: Vec<i32>,
    /// Operators in execution order.
    pub operators: Vec<OperatorDef>,
}

/// A parsed `.tflite` model.
#[derive(Debug, Clone)]
pub struct ModelDef {
    /// Subgraph 0 is the entry point.
    pub subgraphs: Vec<SubgraphDef>,
    /// Buffer contents (empty for activations).
    pub buffers: Vec<Vec<u8>>,
}

impl ModelDef {
    /// Parses a model; any operator outside [`code`] is refused with its name.
    pub fn parse(buf: &[u8]) -> Result<ModelDef, WakeError> {
        if buf.len() < 8 || &buf[4..8] != b"TFL3" {
            return Err(bad("not a TensorFlow Lite file (no TFL3 identifier)"));
        }
        let root = Table::at(buf, deref(buf, 0)?)?;
        let codes = root
            .tables(1)?
            .iter()
            .map(|t| opcode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let buffers = root
            .tables(4)?
            .iter()
            .map(|t| buffer(buf, t))
            .collect::<Result<Vec<_>, _>>()?;
        let subgraphs = root
            .tables(2)?
            .iter()
            .map(|t| subgraph(t, &codes))
            .collect::<Result<Vec<_>, _>>()?;
        if subgraphs.is_empty() {
            return Err(bad("no subgraph"));
        }
        Ok(ModelDef { subgraphs, buffers })
    }
}

/// An operator code: the builtin code, or the custom code's name (refused later).
fn opcode(t: &Table) -> Result<Result<i32, String>, WakeError> {
    let deprecated = i32::from(t.u8(0, 0)? as i8);
    let builtin = t.i32(3, 0)?;
    let code = deprecated.max(builtin);
    if code == 32 {
        return Ok(Err(format!("CUSTOM ({})", t.string(1)?)));
    }
    Ok(Ok(code))
}

fn buffer(file: &[u8], t: &Table) -> Result<Vec<u8>, WakeError> {
    let data = t.bytes(0)?;
    if !data.is_empty() {
        return Ok(data.to_vec());
    }
    let (offset, size) = (t.u64(1)?, t.u64(2)?);
    if offset > 1 {
        let end = offset
            .checked_add(size)
            .ok_or_else(|| bad("buffer overflow"))?;
        let slice = file
            .get(offset as usize..end as usize)
            .ok_or_else(|| bad("buffer out of the file"))?;
        return Ok(slice.to_vec());
    }
    Ok(Vec::new())
}

fn subgraph(t: &Table, codes: &[Result<i32, String>]) -> Result<SubgraphDef, WakeError> {
    let tensors = t
        .tables(0)?
        .iter()
        .map(tensor)
        .collect::<Result<Vec<_>, _>>()?;
    let mut operators = Vec::new();
    for op in t.tables(3)? {
        let idx = op.i32(0, 0)? as usize;
        let code = match codes.get(idx) {
            Some(Ok(c)) => *c,
            Some(Err(name)) => return Err(WakeError::UnsupportedOperator(name.clone())),
            None => return Err(bad("operator code index out of range")),
        };
        let options = options(code, op.table(4)?.as_ref())?;
        operators.push(OperatorDef {
            code,
            inputs: op.i32s(1)?,
            outputs: op.i32s(2)?,
            options,
        });
    }
    Ok(SubgraphDef {
        tensors,
        inputs: t.i32s(1)?,
        outputs: t.i32s(2)?,
        operators,
    })
}

fn tensor(t: &Table) -> Result<TensorDef, WakeError> {
    let quant = match t.table(4)? {
        Some(q) => Quant {
            scales: q.f32s(2)?,
            zero_points: q.i64s(3)?,
            dimension: q.i32(6, 0)?,
        },
        None => Quant::default(),
    };
    Ok(TensorDef {
        name: t.string(3)?,
        shape: t.i32s(0)?,
        dtype: t.u8(1, 0)?,
        buffer: t.i32(2, 0)? as u32 as usize,
        quant,
    })
}

/// Reads the options table of a supported operator; refuses every other operator.
fn options(op: i32, t: Option<&Table>) -> Result<Options, WakeError> {
    use code::*;
    let Some(t) = t else {
        return match op {
            CONV_2D | DEPTHWISE_CONV_2D | STRIDED_SLICE | CONCATENATION | FULLY_CONNECTED
            | CALL_ONCE | VAR_HANDLE => Err(bad(&format!("{} without options", op_name(op)))),
            RESHAPE | LOGISTIC | QUANTIZE | SPLIT_V | READ_VARIABLE | ASSIGN_VARIABLE => {
                Ok(Options::None)
            }
            _ => Err(WakeError::UnsupportedOperator(op_name(op))),
        };
    };
    Ok(match op {
        CONV_2D => Options::Conv {
            padding: t.u8(0, 0)?,
            stride: (t.i32(2, 1)?, t.i32(1, 1)?),
            activation: t.u8(3, 0)?,
            dilation: (t.i32(5, 1)?, t.i32(4, 1)?),
            depth_multiplier: 1,
        },
        DEPTHWISE_CONV_2D => Options::Conv {
            padding: t.u8(0, 0)?,
            stride: (t.i32(2, 1)?, t.i32(1, 1)?),
            depth_multiplier: t.i32(3, 1)?,
            activation: t.u8(4, 0)?,
            dilation: (t.i32(6, 1)?, t.i32(5, 1)?),
        },
        FULLY_CONNECTED => Options::FullyConnected {
            activation: t.u8(0, 0)?,
            weights_format: t.u8(1, 0)?,
            keep_num_dims: t.u8(2, 0)? != 0,
        },
        CONCATENATION => Options::Concatenation {
            axis: t.i32(0, 0)?,
            activation: t.u8(1, 0)?,
        },
        STRIDED_SLICE => Options::StridedSlice {
            begin_mask: t.i32(0, 0)?,
            end_mask: t.i32(1, 0)?,
            ellipsis_mask: t.i32(2, 0)?,
            new_axis_mask: t.i32(3, 0)?,
            shrink_axis_mask: t.i32(4, 0)?,
            offset: t.u8(5, 0)? != 0,
        },
        CALL_ONCE => Options::CallOnce {
            init_subgraph: t.i32(0, 0)?,
        },
        VAR_HANDLE => Options::VarHandle {
            container: t.string(0)?,
            shared_name: t.string(1)?,
        },
        RESHAPE | LOGISTIC | QUANTIZE | SPLIT_V | READ_VARIABLE | ASSIGN_VARIABLE => Options::None,
        _ => return Err(WakeError::UnsupportedOperator(op_name(op))),
    })
}
