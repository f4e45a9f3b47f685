//! LiteRT's GPU accelerator for real: `libLiteRtWebGpuAccelerator.so` (Dawn's
//! WebGPU over Vulkan) next to `runtime/<arch>/libLiteRt.so`, on Mesa's
//! lavapipe, a Vulkan device on the CPU (Mesa 25.x from bookworm-backports).
//! `scripts/setup-deps.sh` installs both; without them these tests fail and
//! say so.
//!
//! - Float models on the GPU give the CPU engine's (XNNPACK's) outputs within
//!   [`FP32_TOLERANCE`].
//! - Without a Vulkan driver, or without executable memory (systemd's
//!   `MemoryDenyWriteExecute=yes`, which lavapipe's shader JIT needs),
//!   loading on the GPU fails with `RuntimeError::Accelerator` and a reason a
//!   person can act on, and the CPU still works in the same process. Both
//!   run in a child process: the Vulkan loader reads its driver list once,
//!   and write-xor-execute cannot be undone.
//! - How much of the graph the GPU took: all of it for the float models;
//!   part for GATHER with 2-D indices, WHILE, and a 5-D ADD that XNNPACK
//!   takes instead (which `LiteRtCompiledModelIsFullyAccelerated` would call
//!   "fully accelerated").
//!
//! Measured here (lavapipe: Mesa 25.0.7, LLVM 15, x86_64), largest
//! |GPU - CPU| over 64 seeded inputs per model:
//!
//! | model | fp32 (the default) | fp16 (by hand) |
//! | --- | ---: | ---: |
//! | har_accel_f32 (softmax of 4) | 9.5e-7 | 5.7e-3 |
//! | multi_io_f32 (softmax of 3, sigmoid) | 8.6e-7 | crashes lavapipe |
//! | dynamic_batch_f32, batch 4 | 1.2e-7 | 8.1e-4 |
//!
//! The fp16 column was measured by forcing `precision = 1` on lavapipe
//! (which the runtime no longer does: fp16 is never used on a software
//! device, because lavapipe dies with SIGSEGV on any op that uses `exp` in
//! fp16, e.g. multi_io's LOGISTIC). LiteRT's own default precision, when no
//! GPU options are given, is fp16: har_accel_f32 then differs by 5.7e-3 too.

use std::path::{Path, PathBuf};
use std::process::Command;

use model_runtime::{Accelerator, Delegation, Engine, LoadOptions, Runtime, RuntimeError};

/// How far fp32 GPU outputs may be from the CPU's: 1000x what was measured
/// (1e-6), far below what matters for probabilities.
const FP32_TOLERANCE: f32 = 1e-3;

const INPUTS_PER_MODEL: u64 = 64;

/// Set in the child processes this file starts.
const CHILD: &str = "EDGE_INFER_GPU_TEST_CHILD";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn library() -> PathBuf {
    workspace()
        .join("runtime")
        .join(std::env::consts::ARCH)
        .join("libLiteRt.so")
}

fn runtime() -> Runtime {
    Runtime::open_path(&library()).unwrap_or_else(|e| {
        panic!("{e}\n(run scripts/setup-deps.sh: it fetches libLiteRt.so and its GPU accelerator)")
    })
}

fn model(name: &str) -> Vec<u8> {
    let path = workspace().join("models").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gpu(allow_fp16: bool) -> LoadOptions {
    LoadOptions {
        accelerator: Accelerator::Gpu { allow_fp16 },
        ..LoadOptions::default()
    }
}

fn load_bytes(rt: &Runtime, name: &str, bytes: Vec<u8>, options: &LoadOptions) -> Box<dyn Engine> {
    rt.load(name, bytes, options).unwrap_or_else(|e| {
        panic!(
            "{name} on {}: {e}\n(the GPU tests need Mesa 25's lavapipe: run scripts/setup-deps.sh)",
            options.accelerator.name()
        )
    })
}

fn load(rt: &Runtime, name: &str, options: &LoadOptions) -> Box<dyn Engine> {
    load_bytes(rt, name, model(name), options)
}

/// The reason of an `Accelerator` error for `accelerator`, or a panic
/// naming what came instead.
fn accelerator_reason(result: Result<Box<dyn Engine>, RuntimeError>, accelerator: &str) -> String {
    match result {
        Err(RuntimeError::Accelerator {
            accelerator: a,
            reason,
        }) if a == accelerator => reason,
        Err(other) => panic!("expected an Accelerator error for {accelerator}, got: {other}"),
        Ok(engine) => panic!(
            "expected an Accelerator error for {accelerator}, but it loaded on {}",
            engine.accelerator()
        ),
    }
}

/// A small deterministic generator (64-bit LCG), so every run feeds the
/// same inputs.
struct Lcg(u64);

impl Lcg {
    fn next_f32(&mut self, range: f32) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let unit = (self.0 >> 40) as f32 / (1u64 << 24) as f32;
        (unit * 2.0 - 1.0) * range
    }
}

/// Fills every float input with seeded values in -range..range.
fn fill(engine: &mut dyn Engine, seed: u64, range: f32) {
    let mut lcg = Lcg(seed);
    for buf in engine.input_buffers_mut() {
        for chunk in buf.chunks_exact_mut(4) {
            chunk.copy_from_slice(&lcg.next_f32(range).to_le_bytes());
        }
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn outputs(engine: &mut dyn Engine) -> Vec<Vec<f32>> {
    engine.invoke().expect("invoke");
    (0..engine.outputs().len())
        .map(|i| f32s(engine.output(i)))
        .collect()
}

/// The largest |gpu - cpu| over [`INPUTS_PER_MODEL`] seeded inputs.
fn max_difference(rt: &Runtime, name: &str, options: &LoadOptions, range: f32) -> f32 {
    let cpu_options = LoadOptions {
        accelerator: Accelerator::Cpu,
        ..options.clone()
    };
    let mut cpu = load(rt, name, &cpu_options);
    let mut gpu = load(rt, name, options);
    assert_eq!(gpu.inputs(), cpu.inputs(), "{name}: same tensors on both");
    assert_eq!(gpu.outputs(), cpu.outputs(), "{name}: same tensors on both");
    let mut worst = 0f32;
    for seed in 0..INPUTS_PER_MODEL {
        fill(cpu.as_mut(), seed, range);
        fill(gpu.as_mut(), seed, range);
        let (c, g) = (outputs(cpu.as_mut()), outputs(gpu.as_mut()));
        for (co, go) in c.iter().zip(&g) {
            assert_eq!(co.len(), go.len());
            for (a, b) in co.iter().zip(go) {
                assert!(a.is_finite() && b.is_finite(), "{name}: {a} vs {b}");
                worst = worst.max((a - b).abs());
            }
        }
    }
    worst
}

/// (model, input range, dynamic batch)
const FLOAT_MODELS: [(&str, f32, u32); 3] = [
    ("har_accel_f32.tflite", 2.0, 0),
    ("multi_io_f32.tflite", 4.0, 0),
    ("dynamic_batch_f32.tflite", 2.0, 4),
];

#[test]
fn float_models_on_the_gpu_match_the_cpu_within_the_fp32_tolerance() {
    let rt = runtime();
    for (name, range, batch) in FLOAT_MODELS {
        let options = LoadOptions {
            dynamic_batch: batch,
            ..gpu(false)
        };
        let engine = load(&rt, name, &options);
        assert_eq!(engine.delegation(), Delegation::Full, "{name}");
        let described = engine.accelerator();
        assert!(
            described.starts_with("gpu/webgpu (Vulkan: llvmpipe")
                && described.ends_with(", fp32, litert)"),
            "{name}: {described}"
        );
        drop(engine);
        let worst = max_difference(&rt, name, &options, range);
        println!("{name}: fp32 max |gpu - cpu| = {worst:e}");
        assert!(
            worst <= FP32_TOLERANCE,
            "{name}: {worst} > {FP32_TOLERANCE}"
        );
    }
}

#[test]
fn on_a_software_device_allowing_fp16_still_computes_in_fp32() {
    // multi_io_f32 has a LOGISTIC, which kills lavapipe in fp16: if fp16
    // were used, this process would die with SIGSEGV.
    let rt = runtime();
    let name = "multi_io_f32.tflite";
    let described = load(&rt, name, &gpu(true)).accelerator();
    assert!(
        described.contains("llvmpipe")
            && described.contains("fp32 (fp16 allowed, not used on a software device)"),
        "{described}"
    );
    let worst = max_difference(&rt, name, &gpu(true), 4.0);
    assert!(
        worst <= FP32_TOLERANCE,
        "{name}: {worst} > {FP32_TOLERANCE}"
    );
}

/// A one-op model: `t2 = ADD(t0, t1)` on float tensors of rank 5, which
/// the GPU accelerator rejects ("Tensor dimensions must be less than 5")
/// and XNNPACK takes.
fn five_d_add() -> Vec<u8> {
    use flatbuffers::FlatBufferBuilder;
    // Field slots of the TFLite schema (vtable offset = 4 + 2 * field id).
    let slot = |id: u16| 4 + 2 * id;
    let mut fbb = FlatBufferBuilder::new();
    let shape = [1, 2, 2, 2, 2];
    let mut tensors = Vec::new();
    for name in ["t0", "t1", "t2"] {
        let name = fbb.create_string(name);
        let dims = fbb.create_vector(&shape);
        let start = fbb.start_table();
        fbb.push_slot_always(slot(0), dims); // Tensor.shape
        fbb.push_slot_always::<i8>(slot(1), 0); // Tensor.type: FLOAT32
        fbb.push_slot_always::<u32>(slot(2), 0); // Tensor.buffer: the empty buffer 0
        fbb.push_slot_always(slot(3), name); // Tensor.name
        tensors.push(fbb.end_table(start));
    }
    let tensors = fbb.create_vector(&tensors);
    let (ins, outs) = (fbb.create_vector(&[0i32, 1]), fbb.create_vector(&[2i32]));
    let (op_ins, op_outs) = (fbb.create_vector(&[0i32, 1]), fbb.create_vector(&[2i32]));
    let start = fbb.start_table();
    fbb.push_slot_always::<u32>(slot(0), 0); // Operator.opcode_index
    fbb.push_slot_always(slot(1), op_ins);
    fbb.push_slot_always(slot(2), op_outs);
    let operator = fbb.end_table(start);
    let operators = fbb.create_vector(&[operator]);
    let start = fbb.start_table();
    fbb.push_slot_always(slot(0), tensors); // SubGraph.tensors
    fbb.push_slot_always(slot(1), ins);
    fbb.push_slot_always(slot(2), outs);
    fbb.push_slot_always(slot(3), operators);
    let subgraph = fbb.end_table(start);
    let subgraphs = fbb.create_vector(&[subgraph]);
    let start = fbb.start_table();
    fbb.push_slot_always::<i8>(slot(0), 0); // OperatorCode.deprecated_builtin_code: ADD
    fbb.push_slot_always::<i32>(slot(2), 1); // OperatorCode.version
    fbb.push_slot_always::<i32>(slot(3), 0); // OperatorCode.builtin_code: ADD
    let code = fbb.end_table(start);
    let codes = fbb.create_vector(&[code]);
    let start = fbb.start_table();
    let empty = fbb.end_table(start);
    let buffers = fbb.create_vector(&[empty]);
    let start = fbb.start_table();
    fbb.push_slot_always::<u32>(slot(0), 3); // Model.version
    fbb.push_slot_always(slot(1), codes);
    fbb.push_slot_always(slot(2), subgraphs);
    fbb.push_slot_always(slot(4), buffers);
    let root = fbb.end_table(start);
    fbb.finish(root, Some("TFL3"));
    fbb.finished_data().to_vec()
}

#[test]
fn delegation_says_whether_the_gpu_took_the_whole_graph() {
    let rt = runtime();
    let cpu = LoadOptions::default();
    assert_eq!(
        load(&rt, "har_accel_f32.tflite", &cpu).delegation(),
        Delegation::Cpu
    );
    assert_eq!(
        load(&rt, "har_accel_f32.tflite", &gpu(false)).delegation(),
        Delegation::Full
    );
    let partial = Delegation::Partial {
        delegated: None,
        total: None,
    };
    // GATHER with [1,4] indices ("Only support 1D indices") stays on the
    // CPU; so does WHILE, around a body the GPU takes.
    for name in ["lookup_int32.tflite", "spin_int32.tflite"] {
        assert_eq!(load(&rt, name, &gpu(false)).delegation(), partial, "{name}");
    }
    let mut spin = load(&rt, "spin_int32.tflite", &gpu(false));
    spin.input_buffers_mut()[0].copy_from_slice(&1000i32.to_le_bytes());
    assert_eq!(outputs(spin.as_mut()), vec![vec![1000.0]]);

    // Everything on XNNPACK, nothing on the GPU: still not "full".
    let mut on_gpu = load_bytes(&rt, "5-D ADD", five_d_add(), &gpu(false));
    assert_eq!(on_gpu.delegation(), partial);
    let mut on_cpu = load_bytes(&rt, "5-D ADD", five_d_add(), &cpu);
    fill(on_gpu.as_mut(), 7, 3.0);
    fill(on_cpu.as_mut(), 7, 3.0);
    let sum = outputs(on_gpu.as_mut());
    assert_eq!(sum, outputs(on_cpu.as_mut()));
    let a = f32s(&on_gpu.input_buffers_mut()[0]);
    let b = f32s(&on_gpu.input_buffers_mut()[1]);
    let expected: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(sum, vec![expected]);
}

#[test]
fn an_invoke_error_on_a_gpu_engine_is_returned_and_the_engine_keeps_working() {
    // lookup_int32's GATHER (on the CPU part of the GPU engine) fails at
    // invoke on an out-of-range index, as on the CPU.
    let rt = runtime();
    let mut engine = load(&rt, "lookup_int32.tflite", &gpu(false));
    let indices = |engine: &mut Box<dyn Engine>, values: [i32; 4]| {
        let buf = &mut engine.input_buffers_mut()[0];
        for (chunk, v) in buf.chunks_exact_mut(4).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
    };
    indices(&mut engine, [0, 16, 2, 3]);
    match engine.invoke() {
        Err(RuntimeError::Call { call, .. }) => assert_eq!(call, "LiteRtRunCompiledModel"),
        other => panic!("expected the invoke to fail, got {other:?}"),
    }
    // Row i of the table is [i + 0.25, -(i + 0.5)].
    indices(&mut engine, [15, 0, 7, 1]);
    assert_eq!(
        outputs(engine.as_mut()),
        vec![vec![15.25, -15.5, 0.25, -0.5, 7.25, -7.5, 1.25, -1.5]]
    );
}

#[test]
fn without_the_accelerator_library_next_to_the_runtime_the_gpu_is_refused() {
    let dir = std::env::temp_dir().join(format!("edge-infer-gpu-lib-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let link = dir.join("libLiteRt.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(library(), &link).expect("symlink libLiteRt.so");
    let rt = Runtime::open_path(&link).expect("open libLiteRt.so through the link");
    let reason = accelerator_reason(
        rt.load("har", model("har_accel_f32.tflite"), &gpu(false)),
        "gpu",
    );
    let canonical = dir.canonicalize().expect("canonical temp dir");
    let missing = canonical.join("libLiteRtWebGpuAccelerator.so");
    assert!(
        reason.contains(&format!("{} is missing", missing.display()))
            && reason.contains("scripts/fetch-runtime.sh"),
        "{reason}"
    );
    let gpu_offered = rt.offered().into_iter().find(|o| o.name == "gpu");
    assert_eq!(
        gpu_offered.map(|o| (o.available, o.detail)),
        Some((false, reason))
    );
    // The CPU does not need it.
    load(&rt, "har_accel_f32.tflite", &LoadOptions::default());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_a_vendor_dispatch_library_the_npu_is_refused() {
    let rt = runtime();
    let options = LoadOptions {
        accelerator: Accelerator::Npu,
        ..LoadOptions::default()
    };
    let reason = accelerator_reason(
        rt.load("har", model("har_accel_f32.tflite"), &options),
        "npu",
    );
    assert!(
        reason.starts_with("no NPU accelerator")
            && reason.contains("libLiteRtDispatch_<Vendor>.so"),
        "{reason}"
    );
}

#[test]
fn the_listing_says_what_runs_here() {
    let offered = runtime().offered();
    let names: Vec<&str> = offered.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["cpu", "gpu", "npu"]);
    assert!(offered[0].available);
    let gpu = &offered[1];
    assert!(gpu.available, "{}", gpu.detail);
    assert!(
        gpu.detail.starts_with("gpu/webgpu (Vulkan: llvmpipe")
            && gpu
                .detail
                .contains("(LiteRT accelerator \"GPU WebGPU\"); a test model ran entirely on it")
            && gpu.detail.contains("Vulkan devices: llvmpipe"),
        "{}",
        gpu.detail
    );
    let npu = &offered[2];
    assert!(
        !npu.available && npu.detail.starts_with("no NPU accelerator"),
        "{}",
        npu.detail
    );
}

/// Runs `child` (one of this file's ignored tests) in a new process of
/// this test binary with `env`, and returns what it printed.
fn run_child(child: &str, env: &[(&str, &Path)]) -> String {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        child,
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD, "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("start the child test");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{child}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn without_a_vulkan_driver_the_gpu_is_refused_with_the_reason() {
    // The loader takes an empty folder as the only place for drivers.
    let empty = std::env::temp_dir().join(format!("edge-infer-no-vulkan-{}", std::process::id()));
    std::fs::create_dir_all(&empty).expect("temp dir");
    let stdout = run_child(
        "child_without_vulkan",
        &[("VK_DRIVER_FILES", &empty), ("VK_ICD_FILENAMES", &empty)],
    );
    let _ = std::fs::remove_dir(&empty);
    assert!(stdout.contains("CHILD-CHECKED"), "{stdout}");
}

#[test]
#[ignore = "run in a child process by without_a_vulkan_driver_the_gpu_is_refused_with_the_reason"]
fn child_without_vulkan() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let rt = runtime();
    let reason = accelerator_reason(
        rt.load("har", model("har_accel_f32.tflite"), &gpu(false)),
        "gpu",
    );
    println!("reason: {reason}");
    // "the Vulkan loader finds no driver or device" here; under qemu, with
    // no aarch64 libvulkan.so.1, "... cannot be loaded".
    assert!(
        reason.starts_with(
            "compiling for the GPU failed (runtime failure (LiteRtStatus 3)): no Vulkan device: the Vulkan loader"
        ) && reason.contains("mesa-vulkan-drivers"),
        "{reason}"
    );
    let gpu_offered = rt.offered().into_iter().find(|o| o.name == "gpu");
    assert_eq!(
        gpu_offered.map(|o| (o.available, o.detail)),
        Some((false, reason))
    );
    // The fallback the daemon does: the CPU in the same process.
    let mut cpu = load(&rt, "har_accel_f32.tflite", &LoadOptions::default());
    fill(cpu.as_mut(), 1, 2.0);
    let probabilities: f32 = outputs(cpu.as_mut())[0].iter().sum();
    assert!((probabilities - 1.0).abs() < 1e-5);
    println!("CHILD-CHECKED");
}

#[test]
fn without_executable_memory_lavapipe_is_refused_instead_of_crashing() {
    let stdout = run_child("child_without_executable_memory", &[]);
    assert!(stdout.contains("CHILD-CHECKED"), "{stdout}");
}

#[test]
#[ignore = "run in a child process by without_executable_memory_lavapipe_is_refused_instead_of_crashing"]
fn child_without_executable_memory() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    extern "C" {
        fn prctl(option: i32, arg2: u64, arg3: u64, arg4: u64, arg5: u64) -> i32;
    }
    const PR_SET_MDWE: i32 = 65;
    const PR_MDWE_REFUSE_EXEC_GAIN: u64 = 1;
    // SAFETY: sets a process flag (Linux 6.3+); no memory is touched.
    let status = unsafe { prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) };
    assert_eq!(
        status,
        0,
        "prctl(PR_SET_MDWE) failed: {} (Linux 6.3 or newer is needed for this test)",
        std::io::Error::last_os_error()
    );
    let rt = runtime();
    let reason = accelerator_reason(
        rt.load("har", model("har_accel_f32.tflite"), &gpu(false)),
        "gpu",
    );
    println!("reason: {reason}");
    assert!(
        reason.starts_with("the Vulkan device is llvmpipe")
            && reason.contains("MemoryDenyWriteExecute=yes"),
        "{reason}"
    );
    let mut cpu = load(&rt, "har_accel_f32.tflite", &LoadOptions::default());
    fill(cpu.as_mut(), 1, 2.0);
    assert_eq!(outputs(cpu.as_mut())[0].len(), 4);
    println!("CHILD-CHECKED");
}
