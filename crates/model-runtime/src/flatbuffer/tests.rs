//! The static reader against every shipped model (the facts LiteRT 2.3.0
//! reports for them, as listed in models/README.md and checked against the
//! runtime by tests/arm.rs), against hand-built edge cases, and against
//! truncated and corrupted files (errors, never panics).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use super::tflite_schema::{
    Model, OperatorCode, QuantizationParameters, SignatureDef, SubGraph, Tensor, TensorMap,
    TensorType,
};
use super::*;

fn model_bytes(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// (name, shape, shape_signature, dtype, quantization)
type Expected<'a> = (&'a str, &'a [usize], &'a [i64], DType, Option<(f64, i32)>);

fn check(file: &str, inputs: &[Expected], outputs: &[Expected]) {
    let facts =
        read_model_facts(file, &model_bytes(file), 1).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(facts.signature_key.as_deref(), Some("serving_default"));
    assert_eq!(facts.schema_version, 3);
    for (what, got, want) in [
        ("inputs", &facts.inputs, inputs),
        ("outputs", &facts.outputs, outputs),
    ] {
        let names: Vec<&str> = got.iter().map(|t| t.name.as_str()).collect();
        let want_names: Vec<&str> = want.iter().map(|w| w.0).collect();
        assert_eq!(names, want_names, "{file} {what} (names, in order)");
        for (g, &(name, shape, signature, dtype, q)) in got.iter().zip(want.iter()) {
            assert_eq!(g.shape, shape, "{file} {name} shape");
            assert_eq!(
                g.shape_signature, signature,
                "{file} {name} shape signature"
            );
            assert_eq!(g.dtype, dtype, "{file} {name} dtype");
            let want_q = q.map(|(scale, zero_point)| Quantization {
                scale: scale as f32,
                zero_point,
            });
            assert_eq!(g.quantization, want_q, "{file} {name} quantization");
        }
    }
}

#[test]
fn har_models() {
    check(
        "har_accel_f32.tflite",
        &[("accel", &[1, 128, 3], &[1, 128, 3], DType::F32, None)],
        &[("probs", &[1, 4], &[1, 4], DType::F32, None)],
    );
    check(
        "har_accel_int8.tflite",
        &[(
            "accel",
            &[1, 128, 3],
            &[1, 128, 3],
            DType::I8,
            Some((0.04596501588821411, -1)),
        )],
        &[(
            "probs",
            &[1, 4],
            &[1, 4],
            DType::I8,
            Some((0.00390625, -128)),
        )],
    );
}

#[test]
fn mobilenet() {
    check(
        "mobilenet_v2_int8.tflite",
        &[(
            "image",
            &[1, 224, 224, 3],
            &[1, 224, 224, 3],
            DType::I8,
            Some((0.007843133062124252, -1)),
        )],
        &[(
            "probs",
            &[1, 1000],
            &[1, 1000],
            DType::I8,
            Some((0.00390625, -128)),
        )],
    );
}

/// The SignatureDef stores accel, temp / anomaly, class (alphabetical);
/// LiteRT reports subgraph order, and so must the reader.
#[test]
fn multi_io_models_in_litert_order() {
    check(
        "multi_io_f32.tflite",
        &[
            ("temp", &[1, 4], &[1, 4], DType::F32, None),
            ("accel", &[1, 16, 3], &[1, 16, 3], DType::F32, None),
        ],
        &[
            ("class", &[1, 3], &[1, 3], DType::F32, None),
            ("anomaly", &[1, 1], &[1, 1], DType::F32, None),
        ],
    );
    check(
        "multi_io_uint8.tflite",
        &[
            (
                "temp",
                &[1, 4],
                &[1, 4],
                DType::U8,
                Some((0.007767345290631056, 128)),
            ),
            (
                "accel",
                &[1, 16, 3],
                &[1, 16, 3],
                DType::U8,
                Some((0.07272554188966751, 132)),
            ),
        ],
        &[
            ("class", &[1, 3], &[1, 3], DType::U8, Some((0.00390625, 0))),
            (
                "anomaly",
                &[1, 1],
                &[1, 1],
                DType::U8,
                Some((0.00390625, 0)),
            ),
        ],
    );
}

#[test]
fn dynamic_batch_follows_the_requested_batch() {
    check(
        "dynamic_batch_f32.tflite",
        &[("features", &[1, 8], &[-1, 8], DType::F32, None)],
        &[("scores", &[1, 2], &[-1, 2], DType::F32, None)],
    );
    let facts = read_model_facts("dyn", &model_bytes("dynamic_batch_f32.tflite"), 4).unwrap();
    assert_eq!(facts.inputs[0].shape, [4, 8]);
    assert_eq!(facts.outputs[0].shape, [4, 2]);
    assert!(facts.inputs[0].is_dynamic());
}

#[test]
fn int32_models() {
    check(
        "lookup_int32.tflite",
        &[("indices", &[1, 4], &[1, 4], DType::I32, None)],
        &[("vectors", &[1, 4, 2], &[1, 4, 2], DType::F32, None)],
    );
    check(
        "spin_int32.tflite",
        &[("iterations", &[1], &[1], DType::I32, None)],
        &[("value", &[1], &[1], DType::F32, None)],
    );
    // The WHILE loop's cond and body are subgraphs of their own.
    let facts = read_model_facts("spin", &model_bytes("spin_int32.tflite"), 1).unwrap();
    assert_eq!(facts.subgraphs, 3);
}

/// The file `edgetpu_compiler` would make of har_accel_int8 (models/build_models.py,
/// step edgetpu): one custom op, and the same signature as its CPU twin.
#[test]
fn edgetpu_model_is_recognized_and_matches_its_cpu_twin() {
    let tpu = read_model_facts("tpu", &model_bytes("har_accel_int8_edgetpu.tflite"), 1).unwrap();
    assert_eq!(tpu.custom_ops, [EDGETPU_CUSTOM_OP]);
    assert!(tpu.compiled_for_edgetpu());
    assert_eq!(tpu.subgraphs, 1);
    let cpu = read_model_facts("cpu", &model_bytes("har_accel_int8.tflite"), 1).unwrap();
    assert!(cpu.custom_ops.is_empty(), "{:?}", cpu.custom_ops);
    assert!(!cpu.compiled_for_edgetpu());
    assert_eq!(tpu.signature_key, cpu.signature_key);
    assert_eq!(tpu.inputs, cpu.inputs);
    assert_eq!(tpu.outputs, cpu.outputs);
    assert_eq!(
        read_custom_ops("tpu", &model_bytes("har_accel_int8_edgetpu.tflite")).unwrap(),
        [EDGETPU_CUSTOM_OP]
    );
}

#[test]
fn plain_models_declare_no_custom_ops() {
    for file in [
        "har_accel_f32.tflite",
        "mobilenet_v2_int8.tflite",
        "multi_io_uint8.tflite",
        "spin_int32.tflite",
        "shapes_int8.tflite",
    ] {
        let facts = read_model_facts(file, &model_bytes(file), 1).unwrap();
        assert!(
            facts.custom_ops.is_empty(),
            "{file}: {:?}",
            facts.custom_ops
        );
        assert!(!facts.compiled_for_edgetpu(), "{file}");
        assert!(read_custom_ops(file, &model_bytes(file))
            .unwrap()
            .is_empty());
    }
}

#[test]
fn the_refusal_names_the_op_the_delegate_and_the_config() {
    let text = edgetpu_refusal("m_edgetpu.tflite", "cpu").to_string();
    for want in [
        "cpu: model m_edgetpu.tflite is compiled for the Edge TPU",
        "edgetpu-custom-op",
        "Edge TPU delegate (libedgetpu)",
        r#"accelerators = ["edgetpu", "cpu"]"#,
        r#"[delegates.edgetpu] library = "libedgetpu.so.1""#,
        "cpu_path",
    ] {
        assert!(text.contains(want), "missing {want:?} in {text}");
    }
    assert!(matches!(
        edgetpu_refusal("m", "gpu"),
        RuntimeError::Accelerator { accelerator, .. } if accelerator == "gpu"
    ));
}

/// Runs the reader and turns a panic into a test failure that names the
/// input; returns whether it succeeded.
fn read_without_panic(what: &str, bytes: &[u8]) -> bool {
    match catch_unwind(AssertUnwindSafe(|| read_model_facts("mutated", bytes, 1))) {
        Ok(result) => result.is_ok(),
        Err(_) => panic!("the reader panicked on {what}"),
    }
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for file in ["har_accel_int8.tflite", "multi_io_uint8.tflite"] {
        let bytes = model_bytes(file);
        for len in 0..bytes.len() {
            let ok = read_without_panic(&format!("{file} cut to {len} bytes"), &bytes[..len]);
            // The verifier needs every table it visits; the first bytes
            // (root offset, vtables) can never be enough.
            if len < bytes.len() / 2 {
                assert!(!ok, "{file} cut to {len} bytes was accepted");
            }
        }
        assert!(read_without_panic(file, &bytes));
    }
}

#[test]
fn truncated_files_name_the_problem() {
    let bytes = model_bytes("har_accel_int8.tflite");
    let err = read_model_facts("m.tflite", &bytes[..bytes.len() / 3], 1).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("model m.tflite: not a valid TFLite flatbuffer"),
        "{text}"
    );
    let err = read_model_facts("m.tflite", &bytes[..5], 1).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
    let err = read_model_facts("m.tflite", b"\x1c\0\0\0ONNXxxxxxxxx", 1).unwrap_err();
    assert!(
        err.to_string().contains("expected file identifier"),
        "{err}"
    );
}

#[test]
fn bit_flips_never_panic() {
    for file in [
        "har_accel_int8.tflite",
        "multi_io_f32.tflite",
        "spin_int32.tflite",
        "har_accel_int8_edgetpu.tflite",
    ] {
        let bytes = model_bytes(file);
        let mut copy = bytes.clone();
        for pos in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                copy[pos] = bytes[pos] ^ mask;
                read_without_panic(&format!("{file} with byte {pos} ^ {mask:#x}"), &copy);
            }
            copy[pos] = bytes[pos];
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    // xorshift64*: deterministic, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let model = model_bytes("multi_io_uint8.tflite");
    for round in 0..2000 {
        let len = 8 + (next() % 512) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        bytes[4..8].copy_from_slice(b"TFL3");
        // Small root offsets reach into the garbage more often.
        bytes[0..4].copy_from_slice(&((next() % 64) as u32).to_le_bytes());
        read_without_panic(&format!("garbage round {round}"), &bytes);
        // A real model with a random stretch overwritten.
        let mut m = model.clone();
        let at = (next() as usize) % m.len();
        let n = ((next() % 64) as usize).min(m.len() - at);
        for b in &mut m[at..at + n] {
            *b = next() as u8;
        }
        read_without_panic(&format!("model overwritten at {at}+{n}"), &m);
    }
}

// ---------------------------------------------------------------------------
// Hand-built models: what converters do not produce but files may contain.

struct TensorDef<'a> {
    name: &'a str,
    ty: TensorType,
    shape: &'a [i32],
    signature: Option<&'a [i32]>,
    scales: &'a [f32],
    zero_points: &'a [i64],
}

fn tensor<'a>(name: &'a str, ty: TensorType, shape: &'a [i32]) -> TensorDef<'a> {
    TensorDef {
        name,
        ty,
        shape,
        signature: None,
        scales: &[],
        zero_points: &[],
    }
}

/// (signature inputs, signature outputs, subgraph index), each input and
/// output as (signature name, tensor index).
type SignatureSpec<'a> = (Vec<(&'a str, u32)>, Vec<(&'a str, u32)>, u32);

struct GraphDef<'a> {
    tensors: Vec<TensorDef<'a>>,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
    /// None: the file has no SignatureDef.
    signature: Option<SignatureSpec<'a>>,
    /// The model's operator codes: (deprecated_builtin_code, builtin_code,
    /// custom_code). No operators use them; the reader reads the codes only.
    op_codes: Vec<(i8, i32, Option<&'a str>)>,
}

fn build(g: &GraphDef) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let mut tensors = Vec::new();
    for t in &g.tensors {
        let name = fbb.create_string(t.name);
        let shape = fbb.create_vector(t.shape);
        let signature = t.signature.map(|s| fbb.create_vector(s));
        let quant = if t.scales.is_empty() {
            None
        } else {
            let scale = fbb.create_vector(t.scales);
            let zp = fbb.create_vector(t.zero_points);
            let start = fbb.start_table();
            fbb.push_slot_always(QuantizationParameters::VT_SCALE, scale);
            fbb.push_slot_always(QuantizationParameters::VT_ZERO_POINT, zp);
            Some(fbb.end_table(start))
        };
        let start = fbb.start_table();
        fbb.push_slot_always(Tensor::VT_SHAPE, shape);
        fbb.push_slot_always(Tensor::VT_NAME, name);
        if let Some(s) = signature {
            fbb.push_slot_always(Tensor::VT_SHAPE_SIGNATURE, s);
        }
        if let Some(q) = quant {
            fbb.push_slot_always(Tensor::VT_QUANTIZATION, q);
        }
        fbb.push_slot::<i8>(Tensor::VT_TYPE_, t.ty.0, 0);
        tensors.push(fbb.end_table(start));
    }
    let tensors = fbb.create_vector(&tensors);
    let inputs = fbb.create_vector(&g.inputs);
    let outputs = fbb.create_vector(&g.outputs);
    let start = fbb.start_table();
    fbb.push_slot_always(SubGraph::VT_TENSORS, tensors);
    fbb.push_slot_always(SubGraph::VT_INPUTS, inputs);
    fbb.push_slot_always(SubGraph::VT_OUTPUTS, outputs);
    let subgraph = fbb.end_table(start);
    let subgraphs = fbb.create_vector(&[subgraph]);
    let signatures = g.signature.as_ref().map(|(ins, outs, index)| {
        let mut maps =
            |list: &[(&str, u32)]| -> Vec<WIPOffset<flatbuffers::TableFinishedWIPOffset>> {
                list.iter()
                    .map(|&(name, tensor_index)| {
                        let name = fbb.create_string(name);
                        let start = fbb.start_table();
                        fbb.push_slot_always(TensorMap::VT_NAME, name);
                        fbb.push_slot::<u32>(TensorMap::VT_TENSOR_INDEX, tensor_index, 0);
                        fbb.end_table(start)
                    })
                    .collect()
            };
        let ins = maps(ins);
        let outs = maps(outs);
        let ins = fbb.create_vector(&ins);
        let outs = fbb.create_vector(&outs);
        let key = fbb.create_string("serving_default");
        let start = fbb.start_table();
        fbb.push_slot_always(SignatureDef::VT_INPUTS, ins);
        fbb.push_slot_always(SignatureDef::VT_OUTPUTS, outs);
        fbb.push_slot_always(SignatureDef::VT_SIGNATURE_KEY, key);
        fbb.push_slot::<u32>(SignatureDef::VT_SUBGRAPH_INDEX, *index, 0);
        let sig = fbb.end_table(start);
        fbb.create_vector(&[sig])
    });
    let op_codes: Vec<_> = g
        .op_codes
        .iter()
        .map(|&(deprecated, builtin, custom)| {
            let custom = custom.map(|c| fbb.create_string(c));
            let start = fbb.start_table();
            if let Some(c) = custom {
                fbb.push_slot_always(OperatorCode::VT_CUSTOM_CODE, c);
            }
            fbb.push_slot::<i32>(OperatorCode::VT_BUILTIN_CODE, builtin, 0);
            fbb.push_slot::<i8>(OperatorCode::VT_DEPRECATED_BUILTIN_CODE, deprecated, 0);
            fbb.end_table(start)
        })
        .collect();
    let op_codes = fbb.create_vector(&op_codes);
    let start = fbb.start_table();
    fbb.push_slot::<u32>(Model::VT_VERSION, 3, 0);
    fbb.push_slot_always(Model::VT_OPERATOR_CODES, op_codes);
    fbb.push_slot_always(Model::VT_SUBGRAPHS, subgraphs);
    if let Some(s) = signatures {
        fbb.push_slot_always(Model::VT_SIGNATURE_DEFS, s);
    }
    let root = fbb.end_table(start);
    fbb.finish(root, Some(tflite_schema::MODEL_IDENTIFIER));
    fbb.finished_data().to_vec()
}

fn simple<'a>(input: TensorDef<'a>) -> GraphDef<'a> {
    GraphDef {
        tensors: vec![input, tensor("out", TensorType::FLOAT32, &[1, 2])],
        inputs: vec![0],
        outputs: vec![1],
        signature: Some((vec![("x", 0)], vec![("y", 1)], 0)),
        op_codes: Vec::new(),
    }
}

fn error_of(g: &GraphDef) -> String {
    read_model_facts("built", &build(g), 1)
        .expect_err("the reader accepted the model")
        .to_string()
}

#[test]
fn hand_built_model_reads_back() {
    let mut input = tensor("in", TensorType::INT8, &[1, 3]);
    input.scales = &[0.5];
    input.zero_points = &[-3];
    let facts = read_model_facts("built", &build(&simple(input)), 1).unwrap();
    assert_eq!(facts.inputs[0].name, "x");
    assert_eq!(
        facts.inputs[0].quantization,
        Some(Quantization {
            scale: 0.5,
            zero_point: -3
        })
    );
    assert_eq!(facts.outputs[0].name, "y");
}

#[test]
fn without_signature_the_main_subgraph_and_tensor_names_are_used() {
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    g.signature = None;
    let facts = read_model_facts("built", &build(&g), 1).unwrap();
    assert_eq!(facts.signature_key, None);
    assert_eq!(facts.inputs[0].name, "in");
    assert_eq!(facts.outputs[0].name, "out");
}

#[test]
fn per_channel_quantized_input_is_unsupported() {
    let mut input = tensor("in", TensorType::INT8, &[1, 3]);
    input.scales = &[0.5, 0.25, 0.125];
    input.zero_points = &[0, 0, 0];
    let e = error_of(&simple(input));
    assert!(e.contains("per-channel"), "{e}");
}

#[test]
fn broken_structure_is_an_error() {
    // A subgraph input that is not a tensor.
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    g.inputs = vec![7];
    assert!(error_of(&g).contains("refers to tensor 7"));
    g.inputs = vec![-1];
    assert!(error_of(&g).contains("refers to tensor -1"));
    // A signature naming a tensor that does not exist.
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    g.signature = Some((vec![("x", 9)], vec![("y", 1)], 0));
    assert!(error_of(&g).contains("refers to tensor 9"));
    // A signature of a subgraph that does not exist.
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    g.signature = Some((vec![("x", 0)], vec![("y", 1)], 4));
    assert!(error_of(&g).contains("subgraph 4"));
    // A signature that does not cover the subgraph's inputs.
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    g.signature = Some((vec![], vec![("y", 1)], 0));
    assert!(error_of(&g).contains("0 inputs"));
}

#[test]
fn bad_shapes_are_errors() {
    let huge = tensor(
        "in",
        TensorType::FLOAT32,
        &[i32::MAX, i32::MAX, i32::MAX, 4],
    );
    assert!(error_of(&simple(huge)).contains("larger than"));
    let negative = tensor("in", TensorType::FLOAT32, &[1, -7]);
    assert!(error_of(&simple(negative)).contains("dimension -7"));
    let mut mismatch = tensor("in", TensorType::FLOAT32, &[1, 3]);
    mismatch.signature = Some(&[-1, 3, 1]);
    assert!(error_of(&simple(mismatch)).contains("different ranks"));
    let mut inner = tensor("in", TensorType::FLOAT32, &[1, 3]);
    inner.signature = Some(&[1, -1]);
    let e = error_of(&simple(inner));
    assert!(e.contains("dynamic dimension at axis 1"), "{e}");
}

#[test]
fn unsupported_element_types_are_errors() {
    let e = error_of(&simple(tensor("in", TensorType::STRING, &[1])));
    assert!(e.contains("element type"), "{e}");
    let e = error_of(&simple(tensor("in", TensorType(99), &[1])));
    assert!(e.contains("unsupported(type id 99)"), "{e}");
}

#[test]
fn custom_op_codes_are_read_once_each_in_file_order() {
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    g.op_codes = vec![
        (3, 3, None),                                 // CONV_2D
        (32, 32, Some("FlexErf")),                    // CUSTOM
        (0, 0, Some("not custom: ADD ignores this")), // ADD
        (32, 32, Some(EDGETPU_CUSTOM_OP)),            // CUSTOM
        (32, 0, Some("OldSchema")),                   // CUSTOM, deprecated field only
        (32, 32, Some("FlexErf")),                    // repeated
    ];
    let facts = read_model_facts("built", &build(&g), 1).unwrap();
    assert_eq!(
        facts.custom_ops,
        ["FlexErf", EDGETPU_CUSTOM_OP, "OldSchema"]
    );
    assert!(facts.compiled_for_edgetpu());
    // A custom op that is not the Edge TPU's does not make an Edge TPU model.
    g.op_codes = vec![(32, 32, Some("edgetpu-custom-op-v2"))];
    let facts = read_model_facts("built", &build(&g), 1).unwrap();
    assert!(!facts.compiled_for_edgetpu());
}

#[test]
fn a_custom_op_code_without_a_name_is_an_error() {
    let mut g = simple(tensor("in", TensorType::FLOAT32, &[1, 3]));
    for custom in [None, Some("")] {
        g.op_codes = vec![(32, 32, custom)];
        let e = error_of(&g);
        assert!(
            e.contains("operator code 0 is CUSTOM but names no custom op"),
            "{e}"
        );
        let e = read_custom_ops("built", &build(&g))
            .unwrap_err()
            .to_string();
        assert!(e.contains("names no custom op"), "{e}");
    }
}
