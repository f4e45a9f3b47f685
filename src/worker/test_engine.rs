//! A test engine for the worker loops' unit tests (`batch`, `ahead`).

use std::sync::Arc;

use model_runtime::{DType, Engine, RuntimeError, TensorSpec};

/// A model with input 'x' [rows, 2] and output 'sum' [rows, 1]: the sum
/// of each row. A row starting with 666 panics, 999 fails the invoke.
pub struct Summer {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub input: Vec<Vec<u8>>,
    pub output: Vec<Vec<u8>>,
    pub invokes: usize,
    /// The same count, readable after the engine moved into a loop.
    pub counted: Arc<std::sync::atomic::AtomicUsize>,
    /// If set, every invoke first waits for a token from it (an engine
    /// held up for as long as a test wants).
    pub gate: Option<std::sync::mpsc::Receiver<()>>,
}

pub fn spec(name: &str, rows: usize, cols: usize) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        shape: vec![rows, cols],
        dtype: DType::F32,
        quantization: None,
        shape_signature: vec![-1, cols as i64],
    }
}

pub fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

impl Summer {
    pub fn new(rows: usize) -> Summer {
        Summer {
            inputs: vec![spec("x", rows, 2)],
            outputs: vec![spec("sum", rows, 1)],
            input: vec![vec![0xAA; rows * 8]],
            output: vec![vec![0; rows * 4]],
            invokes: 0,
            counted: Arc::default(),
            gate: None,
        }
    }
}

impl Engine for Summer {
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }
    fn input_buffers_mut(&mut self) -> &mut [Vec<u8>] {
        &mut self.input
    }
    fn invoke(&mut self) -> Result<(), RuntimeError> {
        if let Some(gate) = &self.gate {
            let _ = gate.recv();
        }
        self.invokes += 1;
        self.counted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let x = f32s(&self.input[0]);
        for (r, pair) in x.chunks_exact(2).enumerate() {
            if pair[0] == 666.0 {
                panic!("kernel bug");
            }
            if pair[0] == 999.0 {
                return Err(RuntimeError::Call {
                    call: "Invoke",
                    status: "runtime failure".into(),
                });
            }
            self.output[0][r * 4..r * 4 + 4].copy_from_slice(&(pair[0] + pair[1]).to_le_bytes());
        }
        Ok(())
    }
    fn output(&self, index: usize) -> &[u8] {
        &self.output[index]
    }
    fn accelerator(&self) -> String {
        "test".into()
    }
    fn accelerator_name(&self) -> &str {
        "cpu"
    }
    fn delegation(&self) -> model_runtime::Delegation {
        model_runtime::Delegation::Cpu
    }
}
