//! External delegate plugins on both back ends, with the project's own test
//! delegate (tests/delegate/test_delegate.cc, built by the tests), the real
//! LiteRT 2.3.0 library (runtime/x86_64/libLiteRt.so) and the real classic
//! TF 2.2.0 library (runtime/classic-x86_64/libtensorflowlite_c.so, fetched
//! by scripts/fetch-classic-runtime.sh).
//!
//! The test delegate counts its live instances in one process-wide counter,
//! so the tests that read it run one at a time (`serial`).

#[path = "../../../tests/common/delegate.rs"]
mod delegate;

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};

use model_runtime::{
    Accelerator, DelegateSpec, Delegation, Engine, LoadOptions, Runtime, RuntimeError,
};

const TOLERANCE: f32 = 1e-5;
/// multi_io_f32: RELU, RESHAPE, MUL, RESHAPE, CONCATENATION, FULLY_CONNECTED,
/// FULLY_CONNECTED, FULLY_CONNECTED, LOGISTIC, CONCATENATION,
/// FULLY_CONNECTED, SOFTMAX.
const MULTI_IO_NODES: usize = 12;
const MULTI_IO_ALL_OPS: &str = "RELU,RESHAPE,MUL,CONCATENATION,FULLY_CONNECTED,LOGISTIC,SOFTMAX";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

fn litert() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let path = repo().join("runtime/x86_64/libLiteRt.so");
        assert!(
            path.exists(),
            "{} is missing: run scripts/setup-deps.sh",
            path.display()
        );
        Runtime::open_path(&path).expect("open libLiteRt.so")
    })
}

fn classic() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        let path = repo().join("runtime/classic-x86_64/libtensorflowlite_c.so");
        assert!(
            path.exists(),
            "{} is missing: run scripts/setup-deps.sh (it runs scripts/fetch-classic-runtime.sh)",
            path.display()
        );
        Runtime::open_path(&path).expect("open libtensorflowlite_c.so")
    })
}

fn spec(options: &[(&str, &str)]) -> DelegateSpec {
    DelegateSpec {
        name: "testdelegate".into(),
        library: delegate::library(),
        options: options
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn with_delegate(options: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        accelerator: Accelerator::Delegate(spec(options)),
        ..LoadOptions::default()
    }
}

fn load(rt: &Runtime, model: &str, options: &LoadOptions) -> Result<Box<dyn Engine>, RuntimeError> {
    let path = repo().join("models").join(model);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    rt.load(model, bytes, options)
}

/// `test_delegate_live_instances()` of the plugin the tests use.
fn live_instances() -> i32 {
    // SAFETY: the test delegate, already built and loaded; same mapping.
    unsafe {
        let lib = libloading::Library::new(delegate::library()).expect("open the test delegate");
        let f = lib
            .get::<unsafe extern "C" fn() -> i32>(b"test_delegate_live_instances\0")
            .expect("test_delegate_live_instances is exported");
        f()
    }
}

/// Deterministic inputs in [-2, 2): a different set for each `seed`.
fn fill_inputs(engine: &mut dyn Engine, seed: u32) {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    for buf in engine.input_buffers_mut() {
        for chunk in buf.chunks_exact_mut(4) {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = (state >> 8) as f32 / (1u32 << 24) as f32 * 4.0 - 2.0;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
    }
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn outputs(engine: &dyn Engine) -> Vec<Vec<f32>> {
    (0..engine.outputs().len())
        .map(|i| floats(engine.output(i)))
        .collect()
}

/// Runs both engines on the same inputs `rounds` times and returns the
/// largest absolute difference of any output.
fn max_difference(a: &mut dyn Engine, b: &mut dyn Engine, rounds: u32) -> f32 {
    let mut worst = 0.0f32;
    for seed in 0..rounds {
        fill_inputs(a, seed);
        fill_inputs(b, seed);
        a.invoke().expect("invoke the delegate engine");
        b.invoke().expect("invoke the reference engine");
        for (x, y) in outputs(a).iter().zip(outputs(b).iter()) {
            assert_eq!(x.len(), y.len());
            for (p, q) in x.iter().zip(y.iter()) {
                assert!(p.is_finite(), "output {p} is not finite");
                worst = worst.max((p - q).abs());
            }
        }
    }
    worst
}

fn accelerator_error(result: Result<Box<dyn Engine>, RuntimeError>) -> (String, String) {
    match result {
        Err(RuntimeError::Accelerator {
            accelerator,
            reason,
        }) => (accelerator, reason),
        Err(other) => panic!("expected an accelerator error, got: {other}"),
        Ok(_) => panic!("expected an accelerator error, the model loaded"),
    }
}

#[test]
fn litert_partial_delegation_is_counted_and_matches_the_cpu() {
    let _s = serial();
    let rt = litert();
    let mut delegated = load(
        rt,
        "multi_io_f32.tflite",
        &with_delegate(&[("ops", "RELU,LOGISTIC,MUL")]),
    )
    .expect("load with the delegate");
    assert_eq!(
        delegated.delegation(),
        Delegation::Partial {
            delegated: Some(3),
            total: Some(MULTI_IO_NODES)
        }
    );
    assert!(
        delegated.accelerator().starts_with("testdelegate"),
        "{}",
        delegated.accelerator()
    );
    // Loaded after a delegate environment exists: the default environment
    // still compiles for XNNPACK.
    let mut cpu = load(rt, "multi_io_f32.tflite", &LoadOptions::default()).expect("load on cpu");
    assert_eq!(cpu.delegation(), Delegation::Cpu);
    assert!(
        cpu.accelerator().contains("xnnpack"),
        "{}",
        cpu.accelerator()
    );
    let diff = max_difference(delegated.as_mut(), cpu.as_mut(), 20);
    assert!(
        diff <= TOLERANCE,
        "delegate vs XNNPACK: max difference {diff}"
    );
    drop(delegated);
    assert_eq!(
        live_instances(),
        0,
        "the engine's delegate was not destroyed"
    );
}

#[test]
fn litert_full_delegation_when_every_op_is_claimed() {
    let _s = serial();
    let rt = litert();
    let mut delegated = load(
        rt,
        "multi_io_f32.tflite",
        &with_delegate(&[("ops", MULTI_IO_ALL_OPS)]),
    )
    .expect("load with the delegate");
    assert_eq!(delegated.delegation(), Delegation::Full);
    let mut cpu = load(rt, "multi_io_f32.tflite", &LoadOptions::default()).expect("load on cpu");
    let diff = max_difference(delegated.as_mut(), cpu.as_mut(), 20);
    assert!(
        diff <= TOLERANCE,
        "delegate vs XNNPACK: max difference {diff}"
    );
}

#[test]
fn litert_full_delegation_survives_the_dynamic_batch_resize() {
    let _s = serial();
    let rt = litert();
    let options = |accelerator| LoadOptions {
        dynamic_batch: 4,
        accelerator,
        ..LoadOptions::default()
    };
    let mut delegated = load(
        rt,
        "dynamic_batch_f32.tflite",
        &options(Accelerator::Delegate(spec(&[(
            "ops",
            "FULLY_CONNECTED,SOFTMAX",
        )]))),
    )
    .expect("load with the delegate");
    assert_eq!(delegated.inputs()[0].shape, vec![4, 8]);
    assert_eq!(delegated.outputs()[0].shape, vec![4, 2]);
    assert_eq!(delegated.delegation(), Delegation::Full);
    let mut cpu = load(rt, "dynamic_batch_f32.tflite", &options(Accelerator::Cpu)).expect("cpu");
    let diff = max_difference(delegated.as_mut(), cpu.as_mut(), 10);
    assert!(
        diff <= TOLERANCE,
        "delegate vs XNNPACK: max difference {diff}"
    );
}

#[test]
fn litert_delegate_that_claims_nothing_reports_none() {
    let _s = serial();
    let mut engine = load(litert(), "multi_io_f32.tflite", &with_delegate(&[]))
        .expect("load with a delegate that claims nothing");
    assert_eq!(engine.delegation(), Delegation::None);
    fill_inputs(engine.as_mut(), 1);
    engine.invoke().expect("runs on LiteRT's CPU kernels");
}

#[test]
fn a_refusing_plugin_is_an_accelerator_error_with_its_report() {
    let _s = serial();
    for rt in [litert(), classic()] {
        let (name, reason) = accelerator_error(load(
            rt,
            "multi_io_f32.tflite",
            &with_delegate(&[("refuse", "1")]),
        ));
        assert_eq!(name, "testdelegate");
        assert!(
            reason.contains("declined to create a delegate")
                && reason.contains("is the Edge TPU attached?")
                && reason.contains("refusing to create a delegate (refuse=1)"),
            "{reason}"
        );
        assert!(
            reason.contains(&delegate::library().display().to_string()),
            "{reason}"
        );
        assert_eq!(live_instances(), 0);
    }
}

#[test]
fn a_plugin_rejecting_its_options_says_why() {
    let _s = serial();
    let (_, reason) = accelerator_error(load(
        litert(),
        "multi_io_f32.tflite",
        &with_delegate(&[("ops", "RELU,CONV_3D")]),
    ));
    assert!(reason.contains("unknown op 'CONV_3D'"), "{reason}");
}

/// The test delegate's spec with another library.
fn with_library(library: &str) -> LoadOptions {
    let mut spec = spec(&[]);
    spec.library = PathBuf::from(library);
    LoadOptions {
        accelerator: Accelerator::Delegate(spec),
        ..LoadOptions::default()
    }
}

#[test]
fn a_missing_plugin_library_is_an_accelerator_error_naming_it() {
    let _s = serial();
    for rt in [litert(), classic()] {
        let options = with_library("/nonexistent/dir/libedgetpu.so.1");
        let (name, reason) = accelerator_error(load(rt, "multi_io_f32.tflite", &options));
        assert_eq!(name, "testdelegate");
        assert!(
            reason.contains("/nonexistent/dir/libedgetpu.so.1")
                && reason.contains("does not exist"),
            "{reason}"
        );

        // A bare name goes to the dynamic linker, whose message is kept.
        let options = with_library("libedge-infer-no-such-delegate.so.1");
        let (_, reason) = accelerator_error(load(rt, "multi_io_f32.tflite", &options));
        assert!(
            reason.contains("cannot load the delegate plugin libedge-infer-no-such-delegate.so.1")
                && reason.contains("cannot open shared object file"),
            "{reason}"
        );
    }
}

#[test]
fn a_library_without_the_plugin_abi_is_an_accelerator_error() {
    let _s = serial();
    let (_, reason) = accelerator_error(load(
        litert(),
        "multi_io_f32.tflite",
        &with_library("libm.so.6"),
    ));
    assert!(
        reason.contains("libm.so.6 does not export tflite_plugin_create_delegate"),
        "{reason}"
    );
}

#[test]
fn a_failing_prepare_is_an_accelerator_error_on_both_back_ends() {
    let _s = serial();
    for rt in [litert(), classic()] {
        let (name, reason) = accelerator_error(load(
            rt,
            "multi_io_f32.tflite",
            &with_delegate(&[("ops", "RELU"), ("fail_prepare", "1")]),
        ));
        assert_eq!(name, "testdelegate");
        assert!(reason.contains("delegate"), "{reason}");
        assert_eq!(live_instances(), 0, "{:?}: delegate leaked", rt.flavor());
    }
}

/// The third invoke fails, the fourth succeeds with the right results (a
/// device that came back), on both back ends.
#[test]
fn an_invoke_failure_is_an_error_for_that_invoke_only() {
    let _s = serial();
    for rt in [litert(), classic()] {
        let mut engine = load(
            rt,
            "multi_io_f32.tflite",
            &with_delegate(&[("ops", "RELU,LOGISTIC,MUL"), ("fail_invoke_at", "3")]),
        )
        .expect("load with the delegate");
        let mut cpu = load(rt, "multi_io_f32.tflite", &LoadOptions::default()).expect("cpu");
        for n in 1..=4u32 {
            fill_inputs(engine.as_mut(), n);
            let result = engine.invoke();
            if n == 3 {
                assert!(result.is_err(), "{:?}: invoke 3 succeeded", rt.flavor());
            } else {
                result.unwrap_or_else(|e| panic!("{:?}: invoke {n}: {e}", rt.flavor()));
            }
        }
        // After the failure the results are right again.
        let diff = max_difference(engine.as_mut(), cpu.as_mut(), 3);
        assert!(
            diff <= TOLERANCE,
            "{:?}: max difference {diff}",
            rt.flavor()
        );
        assert_eq!(live_instances(), 1);
        drop(engine);
        assert_eq!(
            live_instances(),
            0,
            "{:?}: delegate not destroyed",
            rt.flavor()
        );
    }
}

/// A device that stays gone: every invoke from the second on fails.
#[test]
fn invoke_failures_from_the_nth_on_keep_failing() {
    let _s = serial();
    let mut engine = load(
        litert(),
        "multi_io_f32.tflite",
        &with_delegate(&[("ops", "RELU"), ("fail_invoke_from", "2")]),
    )
    .expect("load with the delegate");
    let results: Vec<bool> = (1..=4u32)
        .map(|n| {
            fill_inputs(engine.as_mut(), n);
            engine.invoke().is_ok()
        })
        .collect();
    assert_eq!(results, vec![true, false, false, false]);
}

#[test]
fn every_engine_has_its_own_delegate_destroyed_with_it() {
    let _s = serial();
    for rt in [litert(), classic()] {
        let options = with_delegate(&[("ops", "RELU,LOGISTIC,MUL")]);
        let a = load(rt, "multi_io_f32.tflite", &options).expect("first engine");
        let b = load(rt, "multi_io_f32.tflite", &options).expect("second engine");
        assert_eq!(live_instances(), 2);
        drop(a);
        assert_eq!(live_instances(), 1);
        drop(b);
        assert_eq!(live_instances(), 0);
    }
}

#[test]
fn classic_partial_and_full_delegation_match_the_cpu() {
    let _s = serial();
    let rt = classic();
    let mut cpu = load(rt, "multi_io_f32.tflite", &LoadOptions::default()).expect("cpu");
    assert_eq!(cpu.delegation(), Delegation::Cpu);
    let mut partial = load(
        rt,
        "multi_io_f32.tflite",
        &with_delegate(&[("ops", "RELU,LOGISTIC,MUL")]),
    )
    .expect("partial");
    assert_eq!(
        partial.delegation(),
        Delegation::Partial {
            delegated: Some(3),
            total: Some(MULTI_IO_NODES)
        }
    );
    assert!(partial.accelerator().contains("tflite-classic"));
    let diff = max_difference(partial.as_mut(), cpu.as_mut(), 20);
    assert!(diff <= TOLERANCE, "partial: max difference {diff}");

    let mut full = load(
        rt,
        "multi_io_f32.tflite",
        &with_delegate(&[("ops", MULTI_IO_ALL_OPS)]),
    )
    .expect("full");
    assert_eq!(full.delegation(), Delegation::Full);
    let diff = max_difference(full.as_mut(), cpu.as_mut(), 20);
    assert!(diff <= TOLERANCE, "full: max difference {diff}");

    // And the classic library's CPU agrees with LiteRT's XNNPACK.
    let mut litert_cpu =
        load(litert(), "multi_io_f32.tflite", &LoadOptions::default()).expect("litert cpu");
    let diff = max_difference(cpu.as_mut(), litert_cpu.as_mut(), 20);
    assert!(diff <= TOLERANCE, "TF 2.2 vs LiteRT: max difference {diff}");
}

/// The dynamic batch is fixed after the interpreter applied the delegate
/// (the classic C API applies delegates when it creates the interpreter):
/// the delegate is prepared again for the new shapes, with or without
/// dynamic-tensor support.
#[test]
fn classic_dynamic_batch_with_a_delegate() {
    let _s = serial();
    let mut cpu = load(
        litert(),
        "dynamic_batch_f32.tflite",
        &LoadOptions {
            dynamic_batch: 4,
            ..LoadOptions::default()
        },
    )
    .expect("cpu");
    for extra in [None, Some(("allow_dynamic", "1"))] {
        let mut spec_options = vec![("ops", "FULLY_CONNECTED,SOFTMAX")];
        spec_options.extend(extra);
        let mut delegated = load(
            classic(),
            "dynamic_batch_f32.tflite",
            &LoadOptions {
                dynamic_batch: 4,
                accelerator: Accelerator::Delegate(spec(&spec_options)),
                ..LoadOptions::default()
            },
        )
        .unwrap_or_else(|e| panic!("{spec_options:?}: {e}"));
        assert_eq!(delegated.outputs()[0].shape, vec![4, 2]);
        assert_eq!(delegated.delegation(), Delegation::Full, "{spec_options:?}");
        let diff = max_difference(delegated.as_mut(), cpu.as_mut(), 10);
        assert!(diff <= TOLERANCE, "{spec_options:?}: max difference {diff}");
    }
}

#[test]
fn gpu_and_npu_are_not_served_by_the_classic_library() {
    let _s = serial();
    for accelerator in [Accelerator::Gpu { allow_fp16: false }, Accelerator::Npu] {
        let (name, _) = accelerator_error(load(
            classic(),
            "multi_io_f32.tflite",
            &LoadOptions {
                accelerator: accelerator.clone(),
                ..LoadOptions::default()
            },
        ));
        assert_eq!(name, accelerator.name());
    }
}
