//! Static tensor facts read straight from a `.tflite` file, without any
//! runtime library: what `edge-infer inspect` and `check-config` show on a
//! board where no runtime library loads (armv7 before the vendor's
//! `libtensorflowlite_c.so` is installed, or any machine before
//! `scripts/fetch-runtime.sh` ran).
//!
//! The file is checked with the FlatBuffers verifier before anything is read
//! ([`tflite_schema`] is a vendored subset of the generated TFLite schema
//! bindings), every index is bounds-checked and every size is computed with
//! checked arithmetic: a truncated, corrupt or hostile file gives a
//! [`RuntimeError::BadModel`], never a panic or an out-of-bounds read.
//!
//! The facts are reported the way the LiteRT runtime reports them, so that
//! the same model looks the same with and without a runtime:
//!
//! - the first signature (`serving_default` for converted models); a file
//!   without signatures gets the main subgraph's inputs and outputs, named
//!   by their tensor names, as LiteRT does;
//! - inputs and outputs in **subgraph order**, which is the order the LiteRT
//!   C API gives a signature's tensors (it reorders them), not the order
//!   they are stored in the SignatureDef (alphabetical for converted
//!   models); see `models/README.md`, "Input/output order";
//! - each named by its signature name (`accel`), else its tensor name;
//! - shape from the shape signature, a dynamic (-1) batch dimension fixed to
//!   the requested batch, as the daemon resizes it at load; the shape as
//!   stored in the file is kept as `shape_signature`;
//! - per-tensor quantization (one scale, one zero point); per-channel
//!   quantization on an int8/uint8 input or output is rejected, as the
//!   runtime back end rejects it.
//!
//! The custom op codes the file declares are read too: a model compiled by
//! `edgetpu_compiler` holds one `edgetpu-custom-op` that only the Edge TPU
//! delegate (libedgetpu) can run, and saying so beats the runtime's
//! "unresolved custom op" (see [`ModelFacts::compiled_for_edgetpu`]).
//!
//! What a static reader cannot know: the shape of an output whose size
//! depends on a dynamic input (only shape inference in a runtime knows);
//! such dimensions are reported as the file's stored shape, with the batch
//! dimension following the requested batch.

mod tflite_schema;

use flatbuffers::{ForwardsUOffset, Vector, VerifierOptions};

use crate::{DType, Quantization, RuntimeError, TensorSpec};
use tflite_schema::{Model, SubGraph, Tensor, TensorMap, TensorType};

/// The custom op `edgetpu_compiler` puts in place of every part of a graph
/// it compiled for the Edge TPU (libedgetpu's `edgetpu::kCustomOp`).
pub const EDGETPU_CUSTOM_OP: &str = "edgetpu-custom-op";

/// How to serve an Edge TPU model, in the config's words: how
/// [`edgetpu_refusal`] ends, for any other message that needs the advice.
pub const EDGETPU_CONFIG_HINT: &str = "configure accelerators = [\"edgetpu\", \"cpu\"] with [delegates.edgetpu] library = \"libedgetpu.so.1\", and cpu_path = a CPU build of the model for when no Edge TPU is available";

/// `BuiltinOperator::CUSTOM` in the TFLite schema.
const BUILTIN_CUSTOM: i32 = 32;

/// What a `.tflite` file declares about the signature the daemon serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    /// The signature's key (`serving_default`); `None` when the file has no
    /// signature and the main subgraph's inputs and outputs are used.
    pub signature_key: Option<String>,
    /// The TFLite schema version of the file (3 for every current converter).
    pub schema_version: u32,
    /// How many subgraphs the file holds (control flow adds some).
    pub subgraphs: usize,
    /// The subgraph the signature runs (0, the main one, for converted
    /// models; the classic interpreter API can run only that one).
    pub subgraph_index: usize,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// The custom op codes the file declares (`edgetpu-custom-op`, Flex
    /// ops, ...), each once, in the file's order. The runtime must resolve
    /// every declared op code, used or not, so these are what it needs.
    pub custom_ops: Vec<String>,
}

impl ModelFacts {
    /// Whether `edgetpu_compiler` compiled (part of) this model for the Edge
    /// TPU: it then runs only through the Edge TPU delegate (libedgetpu).
    pub fn compiled_for_edgetpu(&self) -> bool {
        self.custom_ops.iter().any(|op| op == EDGETPU_CUSTOM_OP)
    }
}

/// Why `accelerator` (anything but the Edge TPU delegate) cannot run an
/// Edge TPU model, and what to configure instead: the error
/// [`crate::Runtime::load`] gives before the runtime sees the bytes, which
/// the daemon takes as "this accelerator cannot run it" and falls back.
pub fn edgetpu_refusal(origin: &str, accelerator: &str) -> RuntimeError {
    RuntimeError::Accelerator {
        accelerator: accelerator.to_string(),
        reason: format!(
            "model {origin} is compiled for the Edge TPU (it contains {EDGETPU_CUSTOM_OP}) and runs only through an Edge TPU delegate (libedgetpu); {EDGETPU_CONFIG_HINT}"
        ),
    }
}

/// Largest tensor this reader accepts, in bytes: anything larger than what a
/// 32-bit board can address is a corrupt shape, not a model (and element
/// counts and byte lengths then fit a `usize` everywhere).
const MAX_TENSOR_BYTES: u64 = u32::MAX as u64;

/// Reads the inputs and outputs of the first signature of a TFLite model
/// from its bytes. `dynamic_batch` fixes a dynamic (-1) leading dimension,
/// as [`crate::LoadOptions::dynamic_batch`] does at load. `origin` names the
/// model in error messages (usually its path).
pub fn read_model_facts(
    origin: &str,
    bytes: &[u8],
    dynamic_batch: u32,
) -> Result<ModelFacts, RuntimeError> {
    let model = verified_model(origin, bytes)?;
    let bad = |reason: String| RuntimeError::BadModel {
        origin: origin.to_string(),
        reason,
    };
    let custom_ops = custom_op_codes(origin, &model)?;
    let subgraphs = model.subgraphs().map(|s| s.len()).unwrap_or(0);
    let Some(subgraph_list) = model.subgraphs().filter(|s| !s.is_empty()) else {
        return Err(bad("model has no subgraph".into()));
    };

    // Which subgraph, and the signature's names for its tensors.
    let signature = model.signature_defs().and_then(|defs| defs.iter().next());
    let (subgraph_index, signature_key, input_aliases, output_aliases) = match signature {
        Some(sig) => (
            sig.subgraph_index() as usize,
            Some(sig.signature_key().unwrap_or_default().to_string()),
            aliases(sig.inputs()),
            aliases(sig.outputs()),
        ),
        None => (0, None, Vec::new(), Vec::new()),
    };
    if subgraph_index >= subgraph_list.len() {
        return Err(bad(format!(
            "signature refers to subgraph {subgraph_index}, but the model has {} subgraph(s)",
            subgraph_list.len()
        )));
    }
    let subgraph = subgraph_list.get(subgraph_index);
    let sub_inputs = subgraph.inputs().map(|v| v.len()).unwrap_or(0);
    let sub_outputs = subgraph.outputs().map(|v| v.len()).unwrap_or(0);
    if signature.is_some()
        && (input_aliases.len() != sub_inputs || output_aliases.len() != sub_outputs)
    {
        return Err(bad(format!(
            "signature {:?} has {} inputs and {} outputs, but its subgraph has {sub_inputs} and {sub_outputs}",
            signature_key.as_deref().unwrap_or(""),
            input_aliases.len(),
            output_aliases.len()
        )));
    }

    let reader = SubgraphReader {
        origin,
        subgraph,
        batch: dynamic_batch.max(1) as usize,
    };
    let inputs = reader.tensors(subgraph.inputs(), &input_aliases, Direction::Input, false)?;
    let dynamic_input = inputs.iter().any(TensorSpec::is_dynamic);
    let outputs = reader.tensors(
        subgraph.outputs(),
        &output_aliases,
        Direction::Output,
        dynamic_input,
    )?;
    Ok(ModelFacts {
        signature_key,
        schema_version: model.version(),
        subgraphs,
        subgraph_index,
        inputs,
        outputs,
        custom_ops,
    })
}

/// The custom op codes a TFLite model declares (see
/// [`ModelFacts::custom_ops`]), without reading its tensors.
pub fn read_custom_ops(origin: &str, bytes: &[u8]) -> Result<Vec<String>, RuntimeError> {
    custom_op_codes(origin, &verified_model(origin, bytes)?)
}

fn verified_model<'a>(origin: &str, bytes: &'a [u8]) -> Result<Model<'a>, RuntimeError> {
    crate::check_flatbuffer(origin, bytes)?;
    let opts = VerifierOptions::default();
    tflite_schema::root_as_model_with_opts(&opts, bytes).map_err(|e| RuntimeError::BadModel {
        origin: origin.to_string(),
        reason: format!("not a valid TFLite flatbuffer: {e}"),
    })
}

fn custom_op_codes(origin: &str, model: &Model<'_>) -> Result<Vec<String>, RuntimeError> {
    let mut out: Vec<String> = Vec::new();
    for (index, code) in model.operator_codes().iter().flatten().enumerate() {
        // Files from before schema 3a store the code only in the deprecated
        // field; TFLite takes the larger of the two, and so does this.
        let builtin = code
            .builtin_code()
            .max(i32::from(code.deprecated_builtin_code()));
        if builtin != BUILTIN_CUSTOM {
            continue;
        }
        let Some(name) = code.custom_code().filter(|c| !c.is_empty()) else {
            return Err(RuntimeError::BadModel {
                origin: origin.to_string(),
                reason: format!(
                    "operator code {index} is CUSTOM but names no custom op (custom_code is empty)"
                ),
            });
        };
        if !out.iter().any(|known| known == name) {
            out.push(name.to_string());
        }
    }
    Ok(out)
}

/// (tensor index, signature name) pairs of a SignatureDef's inputs or outputs.
fn aliases(maps: Option<Vector<'_, ForwardsUOffset<TensorMap<'_>>>>) -> Vec<(u32, String)> {
    maps.map(|v| {
        v.iter()
            .map(|m| (m.tensor_index(), m.name().unwrap_or_default().to_string()))
            .collect()
    })
    .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq)]
enum Direction {
    Input,
    Output,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Input => "input",
            Direction::Output => "output",
        }
    }
}

struct SubgraphReader<'a> {
    origin: &'a str,
    subgraph: SubGraph<'a>,
    batch: usize,
}

impl SubgraphReader<'_> {
    fn bad(&self, reason: String) -> RuntimeError {
        RuntimeError::BadModel {
            origin: self.origin.to_string(),
            reason,
        }
    }

    fn unsupported(&self, reason: String) -> RuntimeError {
        RuntimeError::Unsupported {
            origin: self.origin.to_string(),
            reason,
        }
    }

    /// The subgraph's inputs or outputs, in subgraph order.
    fn tensors(
        &self,
        indices: Option<Vector<'_, i32>>,
        aliases: &[(u32, String)],
        dir: Direction,
        dynamic_input: bool,
    ) -> Result<Vec<TensorSpec>, RuntimeError> {
        let tensors = self.subgraph.tensors();
        let count = tensors.map(|t| t.len()).unwrap_or(0);
        // A signature entry names a tensor of its subgraph; one that is not
        // among the subgraph's inputs (outputs) is ignored, as LiteRT does.
        let listed: Vec<i32> = indices.map(|v| v.iter().collect()).unwrap_or_default();
        if let Some((tensor_index, name)) = aliases.iter().find(|(i, _)| *i as usize >= count) {
            return Err(self.bad(format!(
                "signature {} '{name}' refers to tensor {tensor_index}, but the subgraph has {count} tensors",
                dir.as_str()
            )));
        }
        let mut out = Vec::with_capacity(listed.len());
        for (position, &index) in listed.iter().enumerate() {
            let tensor = match (tensors, usize::try_from(index)) {
                (Some(t), Ok(i)) if i < count => t.get(i),
                _ => {
                    return Err(self.bad(format!(
                    "{} {position} refers to tensor {index}, but the subgraph has {count} tensors",
                    dir.as_str()
                )))
                }
            };
            let alias = aliases
                .iter()
                .find(|(i, _)| i64::from(*i) == i64::from(index))
                .map(|(_, name)| name.as_str())
                .filter(|n| !n.is_empty());
            out.push(self.spec(tensor, alias, position, dir, dynamic_input)?);
        }
        Ok(out)
    }

    fn spec(
        &self,
        tensor: Tensor<'_>,
        alias: Option<&str>,
        position: usize,
        dir: Direction,
        dynamic_input: bool,
    ) -> Result<TensorSpec, RuntimeError> {
        let name = alias
            .or(tensor.name().filter(|n| !n.is_empty()))
            .map(str::to_string)
            .unwrap_or_else(|| format!("tensor_{position}"));
        let stored: Vec<i32> = tensor
            .shape()
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        let signature: Vec<i32> = match tensor.shape_signature() {
            Some(sig) if !sig.is_empty() => sig.iter().collect(),
            _ => stored.clone(),
        };
        if signature.len() != stored.len() {
            return Err(self.bad(format!(
                "{} '{name}' has shape {stored:?} but shape signature {signature:?} (different ranks)",
                dir.as_str()
            )));
        }
        let shape_signature: Vec<i64> = signature.iter().map(|&d| i64::from(d)).collect();
        let mut shape = Vec::with_capacity(signature.len());
        for (axis, (&d, &s)) in signature.iter().zip(stored.iter()).enumerate() {
            let dim = match d {
                d if d >= 0 => d as usize,
                -1 if axis == 0 && (dir == Direction::Input || dynamic_input) => self.batch,
                -1 if dir == Direction::Output => s.max(1) as usize,
                -1 => {
                    return Err(self.unsupported(format!(
                        "input '{name}' has a dynamic dimension at axis {axis} (shape signature {shape_signature:?}); only a dynamic batch (axis 0) is supported"
                    )))
                }
                d => {
                    return Err(self.bad(format!(
                        "{} '{name}' has dimension {d} at axis {axis}",
                        dir.as_str()
                    )))
                }
            };
            shape.push(dim);
        }
        let dtype = dtype_of(tensor.type_());
        let Some(elem) = dtype.size() else {
            return Err(self.unsupported(format!(
                "tensor '{name}' has element type {} ({})",
                dtype,
                tensor.type_().variant_name().unwrap_or("unknown")
            )));
        };
        let bytes = shape
            .iter()
            .try_fold(elem as u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&b| b <= MAX_TENSOR_BYTES);
        if bytes.is_none() {
            return Err(self.bad(format!(
                "{} '{name}' with shape {shape:?} ({dtype}) is larger than {MAX_TENSOR_BYTES} bytes",
                dir.as_str()
            )));
        }
        let quantization = self.quantization(&tensor, &name, dtype)?;
        Ok(TensorSpec {
            name,
            shape,
            dtype,
            quantization,
            shape_signature,
        })
    }

    fn quantization(
        &self,
        tensor: &Tensor<'_>,
        name: &str,
        dtype: DType,
    ) -> Result<Option<Quantization>, RuntimeError> {
        let Some(q) = tensor.quantization() else {
            return Ok(None);
        };
        let scales = q.scale().map(|v| v.len()).unwrap_or(0);
        let zero_points = q.zero_point().map(|v| v.len()).unwrap_or(0);
        match (q.scale(), scales) {
            (_, 0) => Ok(None),
            (Some(scale), 1) => {
                let zero_point = match (q.zero_point(), zero_points) {
                    (_, 0) => 0,
                    (Some(z), 1) => i32::try_from(z.get(0)).unwrap_or(0),
                    _ => {
                        return Err(self.bad(format!(
                            "tensor '{name}' has 1 quantization scale but {zero_points} zero points"
                        )))
                    }
                };
                Ok(Some(Quantization {
                    scale: scale.get(0),
                    zero_point,
                }))
            }
            _ if matches!(dtype, DType::I8 | DType::U8) => Err(self.unsupported(format!(
                "tensor '{name}' uses per-channel quantization ({scales} scales) on an input/output; only per-tensor is supported there"
            ))),
            _ => Ok(None),
        }
    }
}

fn dtype_of(t: TensorType) -> DType {
    match t {
        TensorType::FLOAT32 => DType::F32,
        TensorType::INT8 => DType::I8,
        TensorType::UINT8 => DType::U8,
        TensorType::INT16 => DType::I16,
        TensorType::INT32 => DType::I32,
        TensorType::INT64 => DType::I64,
        TensorType::FLOAT16 => DType::F16,
        TensorType::BOOL => DType::Bool,
        other => DType::Other(u32::from(other.0 as u8)),
    }
}

#[cfg(test)]
mod tests;
