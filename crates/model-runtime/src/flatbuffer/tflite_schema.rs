// SPDX-License-Identifier: Apache-2.0
//
// A subset of the FlatBuffers Rust bindings of the TensorFlow Lite model
// schema (tensorflow/compiler/mlir/lite/schema/schema.fbs, schema version 3),
// vendored from edgefirst-tflite 0.10.3 `src/schema_generated.rs`
// (Copyright (c) 2025 Au-Zone Technologies, Apache-2.0; generated with
// `flatc --rust --gen-object-api --gen-onefile`), which is itself generated
// from the TensorFlow schema (Copyright The TensorFlow Authors, Apache-2.0).
// It targets the `flatbuffers` crate 25.x, the version edgefirst-tflite
// depends on.
//
// What was kept, as generated (only the `pub mod tflite` wrapper, imports
// that became unused and the `#[deprecated]` ENUM_* constants were
// dropped): the `TensorType` enum, and for the tables `Model`,
// `OperatorCode`, `SubGraph`, `Tensor`, `QuantizationParameters`,
// `SignatureDef` and `TensorMap` the read accessors and the verifier entries
// of the fields listed below, with the generated vtable offsets (`VT_*`, all
// of them, so the layout stays visible). What was left out: every other
// table, the builders, the object API (`*T`, `unpack`) and the fields not
// listed. One change: `OperatorCode.builtin_code` is read and verified as
// the `i32` that the `BuiltinOperator` enum is stored as (a 4-byte scalar
// either way), so that its 200-odd variants need not be vendored.
//
// Why leaving fields out is sound: a FlatBuffers verifier checks exactly the
// fields its table declares, and only those fields have accessors here, so
// nothing is ever read that was not verified. Fields this subset does not
// know (operators, buffers, sparsity, the quantization details union, ...)
// are neither checked nor read, which is how FlatBuffers readers with an
// older schema treat newer fields too.
//
//   Model                  version, operator_codes, subgraphs, description,
//                          signature_defs
//   OperatorCode           deprecated_builtin_code, custom_code, version,
//                          builtin_code (as i32)
//   SubGraph               tensors, inputs, outputs, name
//   Tensor                 shape, type, buffer, name, quantization,
//                          shape_signature, has_rank
//   QuantizationParameters min, max, scale, zero_point, quantized_dimension
//   SignatureDef           inputs, outputs, signature_key, subgraph_index
//   TensorMap              name, tensor_index
//
// Only `root_as_model_with_opts` (verifying) creates these types from bytes.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct TensorType(pub i8);
#[allow(non_upper_case_globals, dead_code)]
impl TensorType {
    pub const FLOAT32: Self = Self(0);
    pub const FLOAT16: Self = Self(1);
    pub const INT32: Self = Self(2);
    pub const UINT8: Self = Self(3);
    pub const INT64: Self = Self(4);
    pub const STRING: Self = Self(5);
    pub const BOOL: Self = Self(6);
    pub const INT16: Self = Self(7);
    pub const COMPLEX64: Self = Self(8);
    pub const INT8: Self = Self(9);
    pub const FLOAT64: Self = Self(10);
    pub const COMPLEX128: Self = Self(11);
    pub const UINT64: Self = Self(12);
    pub const RESOURCE: Self = Self(13);
    pub const VARIANT: Self = Self(14);
    pub const UINT32: Self = Self(15);
    pub const UINT16: Self = Self(16);
    pub const INT4: Self = Self(17);
    pub const BFLOAT16: Self = Self(18);

    pub const ENUM_MIN: i8 = 0;
    pub const ENUM_MAX: i8 = 18;
    /// Returns the variant's name or "" if unknown.
    pub fn variant_name(self) -> Option<&'static str> {
        match self {
            Self::FLOAT32 => Some("FLOAT32"),
            Self::FLOAT16 => Some("FLOAT16"),
            Self::INT32 => Some("INT32"),
            Self::UINT8 => Some("UINT8"),
            Self::INT64 => Some("INT64"),
            Self::STRING => Some("STRING"),
            Self::BOOL => Some("BOOL"),
            Self::INT16 => Some("INT16"),
            Self::COMPLEX64 => Some("COMPLEX64"),
            Self::INT8 => Some("INT8"),
            Self::FLOAT64 => Some("FLOAT64"),
            Self::COMPLEX128 => Some("COMPLEX128"),
            Self::UINT64 => Some("UINT64"),
            Self::RESOURCE => Some("RESOURCE"),
            Self::VARIANT => Some("VARIANT"),
            Self::UINT32 => Some("UINT32"),
            Self::UINT16 => Some("UINT16"),
            Self::INT4 => Some("INT4"),
            Self::BFLOAT16 => Some("BFLOAT16"),
            _ => None,
        }
    }
}
impl core::fmt::Debug for TensorType {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        if let Some(name) = self.variant_name() {
            f.write_str(name)
        } else {
            f.write_fmt(format_args!("<UNKNOWN {:?}>", self.0))
        }
    }
}
impl<'a> flatbuffers::Follow<'a> for TensorType {
    type Inner = Self;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        let b = unsafe { flatbuffers::read_scalar_at::<i8>(buf, loc) };
        Self(b)
    }
}

impl flatbuffers::EndianScalar for TensorType {
    type Scalar = i8;
    #[inline]
    fn to_little_endian(self) -> i8 {
        self.0.to_le()
    }
    #[inline]
    #[allow(clippy::wrong_self_convention)]
    fn from_little_endian(v: i8) -> Self {
        let b = i8::from_le(v);
        Self(b)
    }
}

impl flatbuffers::Verifiable for TensorType {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        i8::run_verifier(v, pos)
    }
}

impl flatbuffers::SimpleToVerifyInSlice for TensorType {}

// ---------------------------------------------------------------------------
// QuantizationParameters

#[derive(Copy, Clone, PartialEq)]
pub struct QuantizationParameters<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for QuantizationParameters<'a> {
    type Inner = QuantizationParameters<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

#[allow(dead_code)]
impl<'a> QuantizationParameters<'a> {
    pub const VT_MIN: flatbuffers::VOffsetT = 4;
    pub const VT_MAX: flatbuffers::VOffsetT = 6;
    pub const VT_SCALE: flatbuffers::VOffsetT = 8;
    pub const VT_ZERO_POINT: flatbuffers::VOffsetT = 10;
    pub const VT_DETAILS_TYPE: flatbuffers::VOffsetT = 12;
    pub const VT_DETAILS: flatbuffers::VOffsetT = 14;
    pub const VT_QUANTIZED_DIMENSION: flatbuffers::VOffsetT = 16;

    #[inline]
    pub fn min(&self) -> Option<flatbuffers::Vector<'a, f32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, f32>>>(
                    QuantizationParameters::VT_MIN,
                    None,
                )
        }
    }
    #[inline]
    pub fn max(&self) -> Option<flatbuffers::Vector<'a, f32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, f32>>>(
                    QuantizationParameters::VT_MAX,
                    None,
                )
        }
    }
    #[inline]
    pub fn scale(&self) -> Option<flatbuffers::Vector<'a, f32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, f32>>>(
                    QuantizationParameters::VT_SCALE,
                    None,
                )
        }
    }
    #[inline]
    pub fn zero_point(&self) -> Option<flatbuffers::Vector<'a, i64>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, i64>>>(
                    QuantizationParameters::VT_ZERO_POINT,
                    None,
                )
        }
    }
    #[inline]
    pub fn quantized_dimension(&self) -> i32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<i32>(QuantizationParameters::VT_QUANTIZED_DIMENSION, Some(0))
                .unwrap()
        }
    }
}

impl flatbuffers::Verifiable for QuantizationParameters<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, f32>>>(
                "min",
                Self::VT_MIN,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, f32>>>(
                "max",
                Self::VT_MAX,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, f32>>>(
                "scale",
                Self::VT_SCALE,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, i64>>>(
                "zero_point",
                Self::VT_ZERO_POINT,
                false,
            )?
            .visit_field::<i32>("quantized_dimension", Self::VT_QUANTIZED_DIMENSION, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Tensor

#[derive(Copy, Clone, PartialEq)]
pub struct Tensor<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for Tensor<'a> {
    type Inner = Tensor<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

#[allow(dead_code)]
impl<'a> Tensor<'a> {
    pub const VT_SHAPE: flatbuffers::VOffsetT = 4;
    pub const VT_TYPE_: flatbuffers::VOffsetT = 6;
    pub const VT_BUFFER: flatbuffers::VOffsetT = 8;
    pub const VT_NAME: flatbuffers::VOffsetT = 10;
    pub const VT_QUANTIZATION: flatbuffers::VOffsetT = 12;
    pub const VT_IS_VARIABLE: flatbuffers::VOffsetT = 14;
    pub const VT_SPARSITY: flatbuffers::VOffsetT = 16;
    pub const VT_SHAPE_SIGNATURE: flatbuffers::VOffsetT = 18;
    pub const VT_HAS_RANK: flatbuffers::VOffsetT = 20;
    pub const VT_VARIANT_TENSORS: flatbuffers::VOffsetT = 22;

    #[inline]
    pub fn shape(&self) -> Option<flatbuffers::Vector<'a, i32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, i32>>>(
                    Tensor::VT_SHAPE,
                    None,
                )
        }
    }
    #[inline]
    pub fn type_(&self) -> TensorType {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<TensorType>(Tensor::VT_TYPE_, Some(TensorType::FLOAT32))
                .unwrap()
        }
    }
    #[inline]
    pub fn buffer(&self) -> u32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe { self._tab.get::<u32>(Tensor::VT_BUFFER, Some(0)).unwrap() }
    }
    #[inline]
    pub fn name(&self) -> Option<&'a str> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<&str>>(Tensor::VT_NAME, None)
        }
    }
    #[inline]
    pub fn quantization(&self) -> Option<QuantizationParameters<'a>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<QuantizationParameters>>(
                    Tensor::VT_QUANTIZATION,
                    None,
                )
        }
    }
    #[inline]
    pub fn shape_signature(&self) -> Option<flatbuffers::Vector<'a, i32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, i32>>>(
                    Tensor::VT_SHAPE_SIGNATURE,
                    None,
                )
        }
    }
    #[inline]
    pub fn has_rank(&self) -> bool {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<bool>(Tensor::VT_HAS_RANK, Some(false))
                .unwrap()
        }
    }
}

impl flatbuffers::Verifiable for Tensor<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, i32>>>(
                "shape",
                Self::VT_SHAPE,
                false,
            )?
            .visit_field::<TensorType>("type_", Self::VT_TYPE_, false)?
            .visit_field::<u32>("buffer", Self::VT_BUFFER, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<&str>>("name", Self::VT_NAME, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<QuantizationParameters>>(
                "quantization",
                Self::VT_QUANTIZATION,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, i32>>>(
                "shape_signature",
                Self::VT_SHAPE_SIGNATURE,
                false,
            )?
            .visit_field::<bool>("has_rank", Self::VT_HAS_RANK, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// SubGraph

#[derive(Copy, Clone, PartialEq)]
pub struct SubGraph<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for SubGraph<'a> {
    type Inner = SubGraph<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

#[allow(dead_code)]
impl<'a> SubGraph<'a> {
    pub const VT_TENSORS: flatbuffers::VOffsetT = 4;
    pub const VT_INPUTS: flatbuffers::VOffsetT = 6;
    pub const VT_OUTPUTS: flatbuffers::VOffsetT = 8;
    pub const VT_OPERATORS: flatbuffers::VOffsetT = 10;
    pub const VT_NAME: flatbuffers::VOffsetT = 12;
    pub const VT_DEBUG_METADATA_INDEX: flatbuffers::VOffsetT = 14;

    #[inline]
    pub fn tensors(
        &self,
    ) -> Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<Tensor<'a>>>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab.get::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<Tensor>>,
            >>(SubGraph::VT_TENSORS, None)
        }
    }
    #[inline]
    pub fn inputs(&self) -> Option<flatbuffers::Vector<'a, i32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, i32>>>(
                    SubGraph::VT_INPUTS,
                    None,
                )
        }
    }
    #[inline]
    pub fn outputs(&self) -> Option<flatbuffers::Vector<'a, i32>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'a, i32>>>(
                    SubGraph::VT_OUTPUTS,
                    None,
                )
        }
    }
    #[inline]
    pub fn name(&self) -> Option<&'a str> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<&str>>(SubGraph::VT_NAME, None)
        }
    }
}

impl flatbuffers::Verifiable for SubGraph<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<Tensor>>,
            >>("tensors", Self::VT_TENSORS, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, i32>>>(
                "inputs",
                Self::VT_INPUTS,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<flatbuffers::Vector<'_, i32>>>(
                "outputs",
                Self::VT_OUTPUTS,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<&str>>("name", Self::VT_NAME, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// TensorMap

#[derive(Copy, Clone, PartialEq)]
pub struct TensorMap<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for TensorMap<'a> {
    type Inner = TensorMap<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

impl<'a> TensorMap<'a> {
    pub const VT_NAME: flatbuffers::VOffsetT = 4;
    pub const VT_TENSOR_INDEX: flatbuffers::VOffsetT = 6;

    #[inline]
    pub fn name(&self) -> Option<&'a str> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<&str>>(TensorMap::VT_NAME, None)
        }
    }
    #[inline]
    pub fn tensor_index(&self) -> u32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<u32>(TensorMap::VT_TENSOR_INDEX, Some(0))
                .unwrap()
        }
    }
}

impl flatbuffers::Verifiable for TensorMap<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<flatbuffers::ForwardsUOffset<&str>>("name", Self::VT_NAME, false)?
            .visit_field::<u32>("tensor_index", Self::VT_TENSOR_INDEX, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// SignatureDef

#[derive(Copy, Clone, PartialEq)]
pub struct SignatureDef<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for SignatureDef<'a> {
    type Inner = SignatureDef<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

impl<'a> SignatureDef<'a> {
    pub const VT_INPUTS: flatbuffers::VOffsetT = 4;
    pub const VT_OUTPUTS: flatbuffers::VOffsetT = 6;
    pub const VT_SIGNATURE_KEY: flatbuffers::VOffsetT = 8;
    pub const VT_SUBGRAPH_INDEX: flatbuffers::VOffsetT = 12;

    #[inline]
    pub fn inputs(
        &self,
    ) -> Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<TensorMap<'a>>>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab.get::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<TensorMap>>,
            >>(SignatureDef::VT_INPUTS, None)
        }
    }
    #[inline]
    pub fn outputs(
        &self,
    ) -> Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<TensorMap<'a>>>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab.get::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<TensorMap>>,
            >>(SignatureDef::VT_OUTPUTS, None)
        }
    }
    #[inline]
    pub fn signature_key(&self) -> Option<&'a str> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<&str>>(SignatureDef::VT_SIGNATURE_KEY, None)
        }
    }
    #[inline]
    pub fn subgraph_index(&self) -> u32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<u32>(SignatureDef::VT_SUBGRAPH_INDEX, Some(0))
                .unwrap()
        }
    }
}

impl flatbuffers::Verifiable for SignatureDef<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<TensorMap>>,
            >>("inputs", Self::VT_INPUTS, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<TensorMap>>,
            >>("outputs", Self::VT_OUTPUTS, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<&str>>(
                "signature_key",
                Self::VT_SIGNATURE_KEY,
                false,
            )?
            .visit_field::<u32>("subgraph_index", Self::VT_SUBGRAPH_INDEX, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// OperatorCode

#[derive(Copy, Clone, PartialEq)]
pub struct OperatorCode<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for OperatorCode<'a> {
    type Inner = OperatorCode<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

#[allow(dead_code)]
impl<'a> OperatorCode<'a> {
    pub const VT_DEPRECATED_BUILTIN_CODE: flatbuffers::VOffsetT = 4;
    pub const VT_CUSTOM_CODE: flatbuffers::VOffsetT = 6;
    pub const VT_VERSION: flatbuffers::VOffsetT = 8;
    pub const VT_BUILTIN_CODE: flatbuffers::VOffsetT = 10;

    #[inline]
    pub fn deprecated_builtin_code(&self) -> i8 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<i8>(OperatorCode::VT_DEPRECATED_BUILTIN_CODE, Some(0))
                .unwrap()
        }
    }
    #[inline]
    pub fn custom_code(&self) -> Option<&'a str> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<&str>>(OperatorCode::VT_CUSTOM_CODE, None)
        }
    }
    #[inline]
    pub fn version(&self) -> i32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<i32>(OperatorCode::VT_VERSION, Some(1))
                .unwrap()
        }
    }
    /// `BuiltinOperator` as stored (default `ADD`, 0).
    #[inline]
    pub fn builtin_code(&self) -> i32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<i32>(OperatorCode::VT_BUILTIN_CODE, Some(0))
                .unwrap()
        }
    }
}

impl flatbuffers::Verifiable for OperatorCode<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<i8>(
                "deprecated_builtin_code",
                Self::VT_DEPRECATED_BUILTIN_CODE,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<&str>>(
                "custom_code",
                Self::VT_CUSTOM_CODE,
                false,
            )?
            .visit_field::<i32>("version", Self::VT_VERSION, false)?
            .visit_field::<i32>("builtin_code", Self::VT_BUILTIN_CODE, false)?
            .finish();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Model

#[derive(Copy, Clone, PartialEq)]
pub struct Model<'a> {
    pub _tab: flatbuffers::Table<'a>,
}

impl<'a> flatbuffers::Follow<'a> for Model<'a> {
    type Inner = Model<'a>;
    #[inline]
    unsafe fn follow(buf: &'a [u8], loc: usize) -> Self::Inner {
        Self {
            _tab: unsafe { flatbuffers::Table::new(buf, loc) },
        }
    }
}

#[allow(dead_code)]
impl<'a> Model<'a> {
    pub const VT_VERSION: flatbuffers::VOffsetT = 4;
    pub const VT_OPERATOR_CODES: flatbuffers::VOffsetT = 6;
    pub const VT_SUBGRAPHS: flatbuffers::VOffsetT = 8;
    pub const VT_DESCRIPTION: flatbuffers::VOffsetT = 10;
    pub const VT_BUFFERS: flatbuffers::VOffsetT = 12;
    pub const VT_METADATA_BUFFER: flatbuffers::VOffsetT = 14;
    pub const VT_METADATA: flatbuffers::VOffsetT = 16;
    pub const VT_SIGNATURE_DEFS: flatbuffers::VOffsetT = 18;

    #[inline]
    pub fn version(&self) -> u32 {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe { self._tab.get::<u32>(Model::VT_VERSION, Some(0)).unwrap() }
    }
    #[inline]
    pub fn operator_codes(
        &self,
    ) -> Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<OperatorCode<'a>>>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab.get::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<OperatorCode>>,
            >>(Model::VT_OPERATOR_CODES, None)
        }
    }
    #[inline]
    pub fn subgraphs(
        &self,
    ) -> Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<SubGraph<'a>>>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab.get::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<SubGraph>>,
            >>(Model::VT_SUBGRAPHS, None)
        }
    }
    #[inline]
    pub fn description(&self) -> Option<&'a str> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab
                .get::<flatbuffers::ForwardsUOffset<&str>>(Model::VT_DESCRIPTION, None)
        }
    }
    #[inline]
    pub fn signature_defs(
        &self,
    ) -> Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<SignatureDef<'a>>>> {
        // Safety:
        // Created from valid Table for this object
        // which contains a valid value in this slot
        unsafe {
            self._tab.get::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<SignatureDef>>,
            >>(Model::VT_SIGNATURE_DEFS, None)
        }
    }
}

impl flatbuffers::Verifiable for Model<'_> {
    #[inline]
    fn run_verifier(
        v: &mut flatbuffers::Verifier,
        pos: usize,
    ) -> Result<(), flatbuffers::InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<u32>("version", Self::VT_VERSION, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<OperatorCode>>,
            >>("operator_codes", Self::VT_OPERATOR_CODES, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<SubGraph>>,
            >>("subgraphs", Self::VT_SUBGRAPHS, false)?
            .visit_field::<flatbuffers::ForwardsUOffset<&str>>(
                "description",
                Self::VT_DESCRIPTION,
                false,
            )?
            .visit_field::<flatbuffers::ForwardsUOffset<
                flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<SignatureDef>>,
            >>("signature_defs", Self::VT_SIGNATURE_DEFS, false)?
            .finish();
        Ok(())
    }
}

/// Verifies, with the given options, that a buffer of bytes contains a
/// `Model` and returns it.
#[inline]
pub fn root_as_model_with_opts<'b>(
    opts: &flatbuffers::VerifierOptions,
    buf: &'b [u8],
) -> Result<Model<'b>, flatbuffers::InvalidFlatbuffer> {
    flatbuffers::root_with_opts::<Model<'b>>(opts, buf)
}

#[allow(dead_code)] // the tests' model builder uses it
pub const MODEL_IDENTIFIER: &str = "TFL3";
