//! What the daemon needs to know about a model's tensors.

use std::fmt;

/// Element type of a tensor. Only the types a sensor model plausibly takes
/// are named; anything else is kept as `Other` so it can still be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    I8,
    U8,
    I16,
    I32,
    I64,
    F16,
    Bool,
    Other(u32),
}

impl DType {
    /// Bytes per element, when the element has a fixed byte size.
    pub fn size(self) -> Option<usize> {
        match self {
            DType::I8 | DType::U8 | DType::Bool => Some(1),
            DType::I16 | DType::F16 => Some(2),
            DType::F32 | DType::I32 => Some(4),
            DType::I64 => Some(8),
            DType::Other(_) => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::I8 => "int8",
            DType::U8 => "uint8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::F16 => "float16",
            DType::Bool => "bool",
            DType::Other(_) => "unsupported",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Other(code) => write!(f, "unsupported(type id {code})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Affine per-tensor quantization: real = (q - zero_point) * scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quantization {
    pub scale: f32,
    pub zero_point: i32,
}

/// A tensor as the compiled model will see it (dynamic dims already fixed).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Set for int8/uint8/int16 tensors with per-tensor quantization.
    pub quantization: Option<Quantization>,
    /// The shape as stored in the model, with -1 for dynamic dimensions.
    pub shape_signature: Vec<i64>,
}

impl TensorSpec {
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.element_count() * self.dtype.size().unwrap_or(0)
    }

    /// "1x128x3", the form error messages use.
    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        dims.join("x")
    }

    pub fn is_dynamic(&self) -> bool {
        self.shape_signature.iter().any(|&d| d < 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_len_follows_dtype() {
        let spec = TensorSpec {
            name: "x".into(),
            shape: vec![1, 128, 3],
            dtype: DType::F32,
            quantization: None,
            shape_signature: vec![1, 128, 3],
        };
        assert_eq!(spec.element_count(), 384);
        assert_eq!(spec.byte_len(), 1536);
        assert_eq!(spec.shape_string(), "1x128x3");
        assert!(!spec.is_dynamic());
    }
}
