//! The classic TFLite C API back end (`libtensorflowlite_c.so`), through
//! edgefirst-tflite's `Interpreter`. Used where no LiteRT build exists
//! (armv7 boards ship only this library) and, later, for external delegates
//! such as the Edge TPU. Inputs and outputs are in interpreter index order.

use edgefirst_tflite::{Interpreter, Library, Model, TensorType};

use crate::{DType, Engine, LoadOptions, Quantization, RuntimeError, TensorSpec};

/// True when every `TfLite*` symbol this back end calls is exported.
/// edgefirst's generated bindings panic when a missing symbol is called, so
/// this is checked once, before any model is loaded.
pub(crate) fn has_classic_api(lib: &Library) -> bool {
    let s = lib.as_sys();
    s.TfLiteModelCreate.is_ok()
        && s.TfLiteModelDelete.is_ok()
        && s.TfLiteInterpreterOptionsCreate.is_ok()
        && s.TfLiteInterpreterOptionsDelete.is_ok()
        && s.TfLiteInterpreterOptionsSetNumThreads.is_ok()
        && s.TfLiteInterpreterCreate.is_ok()
        && s.TfLiteInterpreterDelete.is_ok()
        && s.TfLiteInterpreterAllocateTensors.is_ok()
        && s.TfLiteInterpreterResizeInputTensor.is_ok()
        && s.TfLiteInterpreterInvoke.is_ok()
        && s.TfLiteInterpreterGetInputTensorCount.is_ok()
        && s.TfLiteInterpreterGetInputTensor.is_ok()
        && s.TfLiteInterpreterGetOutputTensorCount.is_ok()
        && s.TfLiteInterpreterGetOutputTensor.is_ok()
        && s.TfLiteTensorType.is_ok()
        && s.TfLiteTensorNumDims.is_ok()
        && s.TfLiteTensorDim.is_ok()
        && s.TfLiteTensorByteSize.is_ok()
        && s.TfLiteTensorData.is_ok()
        && s.TfLiteTensorName.is_ok()
        && s.TfLiteTensorQuantizationParams.is_ok()
}

pub(crate) struct ClassicEngine {
    interpreter: Interpreter<'static>,
    /// Owns the flatbuffer the interpreter reads: the C API requires the
    /// model data to outlive the interpreter, so this field is declared (and
    /// dropped) after it.
    _model: Model<'static>,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    input_host: Vec<Vec<u8>>,
    output_host: Vec<Vec<u8>>,
    threads: u32,
}

fn dtype_of(t: TensorType) -> DType {
    match t {
        TensorType::Float32 => DType::F32,
        TensorType::Int8 => DType::I8,
        TensorType::UInt8 => DType::U8,
        TensorType::Int16 => DType::I16,
        TensorType::Int32 => DType::I32,
        TensorType::Int64 => DType::I64,
        TensorType::Float16 => DType::F16,
        TensorType::Bool => DType::Bool,
        other => DType::Other(other as u32),
    }
}

fn spec_of(
    name: &str,
    index: usize,
    ty: TensorType,
    shape: Vec<usize>,
    q: edgefirst_tflite::QuantizationParams,
) -> TensorSpec {
    let dtype = dtype_of(ty);
    let quantized = matches!(dtype, DType::I8 | DType::U8 | DType::I16) && q.scale > 0.0;
    TensorSpec {
        name: if name.is_empty() {
            format!("tensor_{index}")
        } else {
            name.to_string()
        },
        shape_signature: shape.iter().map(|&d| d as i64).collect(),
        shape,
        dtype,
        quantization: quantized.then_some(Quantization {
            scale: q.scale,
            zero_point: q.zero_point,
        }),
    }
}

impl ClassicEngine {
    pub(crate) fn load(
        lib: &'static Library,
        origin: &str,
        bytes: Vec<u8>,
        options: &LoadOptions,
    ) -> Result<ClassicEngine, RuntimeError> {
        let bad = |reason: String| RuntimeError::BadModel {
            origin: origin.to_string(),
            reason,
        };
        let model = Model::from_bytes(lib, bytes)
            .map_err(|e| bad(format!("the runtime rejected the model file: {e}")))?;
        let threads = options.cpu_threads.max(1);
        let mut interpreter = Interpreter::builder(lib)
            .map_err(|e| bad(e.to_string()))?
            .num_threads(i32::try_from(threads).unwrap_or(1))
            .build(&model)
            .map_err(|e| bad(format!("creating the interpreter failed: {e}")))?;
        // The classic API reports a dynamic batch as a 1 in the shape; a
        // configured batch other than 1 is applied by resizing.
        if options.dynamic_batch > 1 {
            let shapes: Vec<Vec<usize>> = interpreter
                .inputs()
                .map_err(|e| bad(e.to_string()))?
                .iter()
                .map(|t| t.shape().unwrap_or_default())
                .collect();
            for (i, shape) in shapes.iter().enumerate() {
                let mut dims: Vec<i32> = shape.iter().map(|&d| d as i32).collect();
                if let Some(first) = dims.first_mut() {
                    *first = options.dynamic_batch as i32;
                }
                interpreter
                    .resize_input(i, &dims)
                    .map_err(|e| bad(format!("resizing input {i} failed: {e}")))?;
            }
            interpreter
                .allocate_tensors()
                .map_err(|e| bad(format!("allocating tensors failed: {e}")))?;
        }
        let mut inputs = Vec::new();
        for (i, t) in interpreter
            .inputs()
            .map_err(|e| bad(e.to_string()))?
            .iter()
            .enumerate()
        {
            let shape = t.shape().map_err(|e| bad(e.to_string()))?;
            inputs.push(spec_of(
                t.name(),
                i,
                t.tensor_type(),
                shape,
                t.quantization_params(),
            ));
        }
        let mut outputs = Vec::new();
        for (i, t) in interpreter
            .outputs()
            .map_err(|e| bad(e.to_string()))?
            .iter()
            .enumerate()
        {
            let shape = t.shape().map_err(|e| bad(e.to_string()))?;
            outputs.push(spec_of(
                t.name(),
                i,
                t.tensor_type(),
                shape,
                t.quantization_params(),
            ));
        }
        for spec in inputs.iter().chain(outputs.iter()) {
            if spec.dtype.size().is_none() {
                return Err(RuntimeError::Unsupported {
                    origin: origin.to_string(),
                    reason: format!("tensor '{}' has element type {}", spec.name, spec.dtype),
                });
            }
        }
        Ok(ClassicEngine {
            input_host: inputs.iter().map(|s| vec![0u8; s.byte_len()]).collect(),
            output_host: outputs.iter().map(|s| vec![0u8; s.byte_len()]).collect(),
            interpreter,
            _model: model,
            inputs,
            outputs,
            threads,
        })
    }
}

fn call_err(call: &'static str, e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Call {
        call,
        status: e.to_string(),
    }
}

impl Engine for ClassicEngine {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }

    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.input_host
    }

    fn invoke(&mut self) -> Result<(), RuntimeError> {
        {
            let mut tensors = self
                .interpreter
                .inputs_mut()
                .map_err(|e| call_err("TfLiteInterpreterGetInputTensor", e))?;
            for (t, src) in tensors.iter_mut().zip(self.input_host.iter()) {
                t.copy_from_bytes(src)
                    .map_err(|e| call_err("TfLiteTensorCopyFromBuffer", e))?;
            }
        }
        self.interpreter
            .invoke()
            .map_err(|e| call_err("TfLiteInterpreterInvoke", e))?;
        let tensors = self
            .interpreter
            .outputs()
            .map_err(|e| call_err("TfLiteInterpreterGetOutputTensor", e))?;
        for (t, dst) in tensors.iter().zip(self.output_host.iter_mut()) {
            let bytes = t.as_bytes().map_err(|e| call_err("TfLiteTensorData", e))?;
            let n = bytes.len().min(dst.len());
            dst[..n].copy_from_slice(&bytes[..n]);
        }
        Ok(())
    }

    fn output(&self, index: usize) -> &[u8] {
        &self.output_host[index]
    }

    fn accelerator(&self) -> String {
        format!("cpu ({} threads, tflite-classic)", self.threads)
    }
}
