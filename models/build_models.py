#!/usr/bin/env python3
"""Builds every .tflite model in models/ reproducibly (fixed seeds, single-threaded).

Run through models/build.sh (creates the venv from models/requirements.txt).
Outputs (all written next to this script):
  har_accel_f32.tflite, har_accel_int8.tflite, har_accel.labels
  mobilenet_v2_int8.tflite
  multi_io_f32.tflite, multi_io_uint8.tflite
  dynamic_batch_f32.tflite
  lookup_int32.tflite   (GATHER from a constant table; fails at invoke on out-of-range indices)
  spin_int32.tflite     (a WHILE loop run `iterations` times: invoke time set by the input)
  mobilenet_v2_dynamic_int8.tflite  (mobilenet_v2_int8 with a dynamic batch dimension)
  shapes_int8.tflite, shapes.labels  (circle / square / triangle / none on 96x96 RGB pictures)
  har_accel_int8_edgetpu.tflite  (har_accel_int8 as edgetpu_compiler lays it out: one
                                  edgetpu-custom-op; runs only through an Edge TPU delegate)
  models_summary.json   (tensor details as read back by the TF Lite interpreter)
"""
import os

# Must be set before TensorFlow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_DETERMINISTIC_OPS"] = "1"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ["PYTHONHASHSEED"] = "0"

import hashlib
import json
import random
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from accel_synth import LABELS, gen_dataset  # noqa: E402
import shapes_synth  # noqa: E402  (numpy + Pillow)

SEED = 20240601
MAX_BYTES = 5 * 1024 * 1024

warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    keras.utils.set_random_seed(seed)
    try:
        tf.config.experimental.enable_op_determinism()
    except Exception:  # pragma: no cover - older TF
        pass


def export_saved_model(fn, input_signature, model) -> str:
    """Exports `fn` (a callable over named tensors returning a dict of named outputs) as
    the serving_default signature of a SavedModel and returns its directory.

    keras.export.ExportArchive is used because a plain tf.Module + tf.saved_model.save
    of a Keras 3 model leaves VAR_HANDLE/READ_VARIABLE ops in the converted model
    (the variables are not frozen), which breaks int8 calibration."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", fn, input_signature=input_signature)
    path = tempfile.mkdtemp(prefix="edge_infer_sm_")
    archive.write_out(path, verbose=False)
    return path


def convert(saved_model_dir: str, *, rep_data=None, io_type=None) -> bytes:
    """float32 conversion, or full-integer quantization when rep_data is given."""
    conv = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if rep_data is not None:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = rep_data
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = io_type
        conv.inference_output_type = io_type
    return conv.convert()


def write_model(name: str, data: bytes) -> None:
    path = HERE / name
    path.write_bytes(data)
    size = len(data)
    if size >= MAX_BYTES:
        raise SystemExit(f"{name} is {size} bytes, over the 5 MB limit")
    print(f"  wrote {name}: {size} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]}")


def tflite_eval(data: bytes, feeds_by_sig_name: dict) -> dict:
    """Runs a model through the TF Lite interpreter's default signature (float domain I/O)."""
    interp = tf.lite.Interpreter(model_content=data, num_threads=1)
    runner = interp.get_signature_runner()
    in_det = runner.get_input_details()
    feeds = {}
    for k, x in feeds_by_sig_name.items():
        d = in_det[k]
        if d["dtype"] in (np.int8, np.uint8):
            s, z = d["quantization"]
            info = np.iinfo(d["dtype"])
            t = np.float32(x) / np.float32(s)
            q = np.sign(t) * np.floor(np.abs(t) + np.float32(0.5)) + z
            feeds[k] = np.clip(q, info.min, info.max).astype(d["dtype"])
        else:
            feeds[k] = np.asarray(x, dtype=d["dtype"])
    out = runner(**feeds)
    out_det = runner.get_output_details()
    res = {}
    for k, v in out.items():
        d = out_det[k]
        if d["dtype"] in (np.int8, np.uint8):
            s, z = d["quantization"]
            v = (v.astype(np.float32) - np.float32(z)) * np.float32(s)
        res[k] = v
    return res


def describe(data: bytes) -> dict:
    interp = tf.lite.Interpreter(model_content=data)

    def det(d):
        s, z = d["quantization"]
        return {
            "index": int(d["index"]),
            "name": d["name"],
            "shape": [int(v) for v in d["shape"]],
            "shape_signature": [int(v) for v in d["shape_signature"]],
            "dtype": np.dtype(d["dtype"]).name,
            "scale": float(s),
            "zero_point": int(z),
        }

    sigs = interp.get_signature_list()
    return {
        "inputs": [det(d) for d in interp.get_input_details()],
        "outputs": [det(d) for d in interp.get_output_details()],
        "signatures": sigs,
        "bytes": len(data),
    }


# --------------------------------------------------------------------------- HAR
def build_har(summary: dict) -> None:
    print("[har_accel] generating synthetic data")
    x_train, y_train = gen_dataset(1500, seed=SEED + 1)
    x_val, y_val = gen_dataset(250, seed=SEED + 2)
    x_test, y_test = gen_dataset(500, seed=SEED + 3)

    seed_all(SEED)
    inp = keras.Input(shape=(128, 3), name="accel")
    h = keras.layers.Conv1D(16, 5, strides=2, padding="same", activation="relu", name="conv1")(inp)
    h = keras.layers.Conv1D(24, 5, strides=2, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.Concatenate(name="pool")(
        [keras.layers.GlobalAveragePooling1D()(h), keras.layers.GlobalMaxPooling1D()(h)]
    )
    out = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="har_accel")
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"[har_accel] params: {model.count_params()}")
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=8, batch_size=64,
              shuffle=True, verbose=2)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    print(f"[har_accel] keras held-out accuracy: {keras_acc:.4f} on {len(y_test)} windows")

    sm = export_saved_model(lambda accel: {"probs": model(accel, training=False)},
                            [tf.TensorSpec([1, 128, 3], tf.float32, name="accel")], model)
    f32 = convert(sm)

    rep_x, _ = gen_dataset(100, seed=SEED + 4)

    def rep():
        for w in rep_x:
            yield {"accel": w[None]}

    i8 = convert(sm, rep_data=rep, io_type=tf.int8)
    shutil.rmtree(sm)

    accs = {}
    for name, data in (("har_accel_f32.tflite", f32), ("har_accel_int8.tflite", i8)):
        pred = np.array([np.argmax(tflite_eval(data, {"accel": w[None]})["probs"]) for w in x_test])
        accs[name] = float(np.mean(pred == y_test))
        print(f"[har_accel] {name} held-out accuracy: {accs[name]:.4f}")
        write_model(name, data)
        summary[name] = describe(data)
        summary[name]["heldout_accuracy"] = accs[name]
    summary["har_accel_keras_accuracy"] = keras_acc
    (HERE / "har_accel.labels").write_text("\n".join(LABELS) + "\n")
    print("  wrote har_accel.labels")


# --------------------------------------------------------------------- MobileNetV2
def mobilenet_int8(batch) -> bytes:
    """MobileNetV2 alpha=0.35 with the recipe below, full int8, input TensorSpec
    [batch, 224, 224, 3] (batch 1, or None for a dynamic batch dimension)."""
    seed_all(SEED + 10)
    print("[mobilenet_v2] building MobileNetV2 alpha=0.35, random init")
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=0.35, weights=None,
                                           classes=1000, classifier_activation="softmax")
    # A freshly initialised MobileNetV2 is degenerate: with BatchNorm moving statistics at
    # mean 0 / variance 1 the activations shrink to ~1e-11 by the last layer, so every
    # softmax output is 1/1000 and the int8 output is a constant -128. Give it data-
    # dependent statistics instead: one training-mode pass over 16 random images with
    # BatchNorm momentum 0 sets each layer's moving mean/variance to that batch's
    # statistics. Then scale the classifier kernel x6 so the softmax is not flat
    # (top-1 probability ~0.1 and input-dependent).
    calib = np.random.default_rng(SEED + 12).uniform(-1.0, 1.0, (16, 224, 224, 3)).astype(np.float32)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(calib, training=True)
    dense = model.get_layer("predictions")
    dense.kernel.assign(dense.kernel * 6.0)
    probe = model(calib[:4], training=False).numpy()
    print(f"[mobilenet_v2] float top-1 prob on 4 images: {[round(float(v), 3) for v in probe.max(axis=1)]}, "
          f"argmax {probe.argmax(axis=1).tolist()}")
    sm = export_saved_model(lambda image: {"probs": model(image, training=False)},
                            [tf.TensorSpec([batch, 224, 224, 3], tf.float32, name="image")], model)
    rng = np.random.default_rng(SEED + 11)
    rep_x = rng.uniform(-1.0, 1.0, (32, 1, 224, 224, 3)).astype(np.float32)

    def rep():
        for x in rep_x:
            yield {"image": x}

    data = convert(sm, rep_data=rep, io_type=tf.int8)
    shutil.rmtree(sm)
    return data


def build_mobilenet(summary: dict) -> None:
    data = mobilenet_int8(1)
    write_model("mobilenet_v2_int8.tflite", data)
    summary["mobilenet_v2_int8.tflite"] = describe(data)


def reshape_targets(data: bytes) -> list:
    """For every RESHAPE in subgraph 0: its constant target shape (the `shape` input if it
    is a constant tensor, else the new_shape option), or None when computed at run time."""
    from tensorflow.lite.python import schema_py_generated as schema

    fb = schema.Model.GetRootAsModel(data, 0)
    sg = fb.Subgraphs(0)
    out = []
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        code = fb.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) != schema.BuiltinOperator.RESHAPE:
            continue
        target = None
        if op.InputsLength() > 1 and op.Inputs(1) >= 0:
            buf = fb.Buffers(sg.Tensors(op.Inputs(1)).Buffer())
            if buf.DataLength() > 0:
                target = np.frombuffer(buf.DataAsNumpy().tobytes(), dtype=np.int32).tolist()
        elif op.BuiltinOptions() is not None:
            opts = schema.ReshapeOptions()
            opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            target = opts.NewShapeAsNumpy().tolist() if opts.NewShapeLength() else None
        out.append(target)
    return out


def tflite_op_names(data: bytes) -> list:
    from tensorflow.lite.python import schema_py_generated as schema

    fb = schema.Model.GetRootAsModel(data, 0)
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    return sorted(names[max(fb.OperatorCodes(i).BuiltinCode(), fb.OperatorCodes(i).DeprecatedBuiltinCode())]
                  for i in range(fb.OperatorCodesLength()))


def build_mobilenet_dynamic(summary: dict) -> None:
    """The same network and weights as mobilenet_v2_int8 (same recipe and seeds), exported
    with TensorSpec([None, 224, 224, 3]): input [-1,224,224,3], output [-1,1000], for
    micro-batching (max_batch). Checks that the graph runs at batch 8 and that each row
    equals a batch-1 run of the same image and, when models/mobilenet_v2_int8.tflite
    exists, the fixed-batch model's output."""
    name = "mobilenet_v2_dynamic_int8.tflite"
    data = mobilenet_int8(None)
    d = describe(data)
    assert d["inputs"][0]["shape_signature"] == [-1, 224, 224, 3], d["inputs"][0]
    assert d["outputs"][0]["shape_signature"] == [-1, 1000], d["outputs"][0]

    # No RESHAPE may have a constant target shape with the batch (1) baked in.
    targets = reshape_targets(data)
    for t in targets:
        assert t is None or (len(t) > 0 and t[0] == -1), f"RESHAPE to constant {t} hard-codes the batch"
    print(f"[mobilenet_v2_dynamic] ops: {tflite_op_names(data)}; RESHAPE targets: {targets}")

    # Run batch 8 in the TF Lite interpreter: rows must equal batch-1 runs bit for bit.
    interp = tf.lite.Interpreter(model_content=data, num_threads=1)
    x = np.random.default_rng(SEED + 13).integers(-128, 128, (8, 224, 224, 3), dtype=np.int8)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def run(i, batch_x):
        i.resize_tensor_input(inp["index"], list(batch_x.shape))
        i.allocate_tensors()
        i.set_tensor(inp["index"], batch_x)
        i.invoke()
        return i.get_tensor(out["index"]).copy()

    y8 = run(interp, x)
    assert y8.shape == (8, 1000) and y8.dtype == np.int8, (y8.shape, y8.dtype)
    y1 = np.concatenate([run(interp, x[k:k + 1]) for k in range(8)])
    assert np.array_equal(y8, y1), f"batch-8 rows differ from batch-1 runs (max |diff| {np.abs(y8.astype(int) - y1).max()})"
    fixed = HERE / "mobilenet_v2_int8.tflite"
    if fixed.exists():
        fi = tf.lite.Interpreter(model_content=fixed.read_bytes(), num_threads=1)
        fi.allocate_tensors()
        fin, fout = fi.get_input_details()[0], fi.get_output_details()[0]
        assert (fin["quantization"], fout["quantization"]) == (inp["quantization"], out["quantization"])
        yf = []
        for k in range(8):
            fi.set_tensor(fin["index"], x[k:k + 1])
            fi.invoke()
            yf.append(fi.get_tensor(fout["index"]).copy())
        assert np.array_equal(np.concatenate(yf), y1), "outputs differ from mobilenet_v2_int8.tflite"
        print("[mobilenet_v2_dynamic] batch 8 = 8 x batch 1 = mobilenet_v2_int8.tflite, bit for bit")
    else:
        print("[mobilenet_v2_dynamic] batch 8 = 8 x batch 1, bit for bit (no mobilenet_v2_int8.tflite to compare)")
    write_model(name, data)
    summary[name] = d


# -------------------------------------------------------------------------- multi IO
def multi_io_data(n: int, rng: np.random.Generator):
    """Toy task: class = which accel axis has the largest mean |a|; anomaly = mean temp > 0.25."""
    accel = rng.normal(0.0, 1.0, (n, 16, 3)).astype(np.float32)
    accel[np.arange(n), :, rng.integers(0, 3, n)] *= 2.5
    temp = rng.uniform(-1.0, 1.0, (n, 4)).astype(np.float32)
    y_class = np.argmax(np.mean(np.abs(accel), axis=1), axis=1)
    y_anom = (np.mean(temp, axis=1) > 0.25).astype(np.float32)[:, None]
    return accel, temp, y_class, y_anom


def build_multi_io(summary: dict) -> None:
    seed_all(SEED + 20)
    rng = np.random.default_rng(SEED + 21)
    a_tr, t_tr, c_tr, n_tr = multi_io_data(4000, rng)
    a_in = keras.Input(shape=(16, 3), name="accel")
    t_in = keras.Input(shape=(4,), name="temp")
    # |a| split into positive and negative parts so a small dense layer can learn the task.
    pos = keras.layers.Flatten()(keras.layers.ReLU()(a_in))
    neg = keras.layers.Flatten()(keras.layers.ReLU()(keras.layers.Rescaling(-1.0)(a_in)))
    ha = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([pos, neg]))
    ht = keras.layers.Dense(8, activation="relu")(t_in)
    h = keras.layers.Concatenate()([ha, ht])
    c_out = keras.layers.Dense(3, activation="softmax", name="class")(h)
    n_out = keras.layers.Dense(1, activation="sigmoid", name="anomaly")(ht)
    model = keras.Model([a_in, t_in], [c_out, n_out], name="multi_io")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=["sparse_categorical_crossentropy", "binary_crossentropy"])
    model.fit([a_tr, t_tr], [c_tr, n_tr], epochs=5, batch_size=64, verbose=2)

    def call(accel, temp):
        c, n = model([accel, temp], training=False)
        return {"class": c, "anomaly": n}

    sm = export_saved_model(call, [tf.TensorSpec([1, 16, 3], tf.float32, name="accel"),
                                   tf.TensorSpec([1, 4], tf.float32, name="temp")], model)
    f32 = convert(sm)
    rep_a, rep_t, _, _ = multi_io_data(100, np.random.default_rng(SEED + 22))

    def rep():
        for a, t in zip(rep_a, rep_t):
            yield {"accel": a[None], "temp": t[None]}

    u8 = convert(sm, rep_data=rep, io_type=tf.uint8)
    shutil.rmtree(sm)
    for name, data in (("multi_io_f32.tflite", f32), ("multi_io_uint8.tflite", u8)):
        write_model(name, data)
        summary[name] = describe(data)


# ---------------------------------------------------------------------- dynamic batch
def build_dynamic(summary: dict) -> None:
    seed_all(SEED + 30)
    inp = keras.Input(shape=(8,), name="features")
    h = keras.layers.Dense(16, activation="relu")(inp)
    out = keras.layers.Dense(2, activation="softmax", name="scores")(h)
    model = keras.Model(inp, out, name="dynamic_batch")
    sm = export_saved_model(lambda features: {"scores": model(features, training=False)},
                            [tf.TensorSpec([None, 8], tf.float32, name="features")], model)
    data = convert(sm)
    shutil.rmtree(sm)
    write_model("dynamic_batch_f32.tflite", data)
    d = describe(data)
    assert d["inputs"][0]["shape_signature"] == [-1, 8], d["inputs"][0]
    assert d["outputs"][0]["shape_signature"] == [-1, 2], d["outputs"][0]
    summary["dynamic_batch_f32.tflite"] = d


# ------------------------------------------------------------------- lookup (gather)
LOOKUP_ROWS = 16


def lookup_table() -> np.ndarray:
    """Row i = [i + 0.25, -(i + 0.5)]: every value is exact in float32 and every row is
    distinct, so a test can tell which row came back."""
    i = np.arange(LOOKUP_ROWS, dtype=np.float64)
    return np.stack([i + 0.25, -(i + 0.5)], axis=1).astype(np.float32)


def build_lookup(summary: dict) -> None:
    """A single GATHER over a constant [16, 2] float32 table, indexed by a runtime int32
    input. The TF Lite GATHER kernel checks the indices when it runs, so an index outside
    0..15 makes *invoke* fail (not load, not allocate): the daemon's inference_failed path.
    No Keras model and no variables, so a plain tf.Module SavedModel is enough."""
    table = lookup_table()

    class Lookup(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.int32, name="indices")])
        def serve(self, indices):
            return {"vectors": tf.gather(tf.constant(table), indices, axis=0, name="vectors")}

    module = Lookup()
    sm = tempfile.mkdtemp(prefix="edge_infer_sm_")
    tf.saved_model.save(module, sm, signatures={"serving_default": module.serve})
    data = convert(sm)
    shutil.rmtree(sm)

    interp = tf.lite.Interpreter(model_content=data, num_threads=1)
    runner = interp.get_signature_runner()
    idx = np.array([[0, 5, 15, 3]], dtype=np.int32)
    got = runner(indices=idx)["vectors"]
    assert got.dtype == np.float32 and got.shape == (1, 4, 2), (got.dtype, got.shape)
    assert np.array_equal(got, table[idx]), got
    for bad in ([[16, 0, 0, 0]], [[0, 0, 0, -1]]):
        try:
            runner(indices=np.array(bad, dtype=np.int32))
        except RuntimeError as e:
            assert "gather index out of bounds" in str(e), e
        else:
            raise SystemExit(f"lookup_int32: GATHER did not fail on indices {bad}")
    write_model("lookup_int32.tflite", data)
    d = describe(data)
    assert [x["dtype"] for x in d["inputs"]] == ["int32"] and d["inputs"][0]["shape"] == [1, 4], d
    assert [x["dtype"] for x in d["outputs"]] == ["float32"] and d["outputs"][0]["shape"] == [1, 4, 2], d
    summary["lookup_int32.tflite"] = d


# ------------------------------------------------------------------- spin (while loop)
SPIN_FLOAT_LIMIT = 2 ** 24  # x + 1.0 stops changing in float32 here (2^24 + 1 rounds to 2^24)


def spin_reference(n: int) -> np.float32:
    """The value spin_int32 returns: max(n, 0) additions of 1.0 to 0.0 in float32, which
    is float32(n) for 0 <= n <= 2^24, 0 for n <= 0, and 2^24 above."""
    return np.float32(min(max(n, 0), SPIN_FLOAT_LIMIT))


def build_spin(summary: dict) -> None:
    """A WHILE loop that runs `iterations` times (int32 input [1]) adding 1.0 to a float32
    scalar and returns it as `value` [1]. Its invoke time grows linearly with the input
    (about 0.3 us per iteration with LiteRT 2.3.0 on x86_64), so a test can wedge a model
    worker for seconds or minutes: the watchdog tests. Builtin ops only (RESHAPE, WHILE,
    LESS, ADD); the loop bound is a runtime input, so nothing can be constant-folded."""

    class Spin(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1], tf.int32, name="iterations")])
        def serve(self, iterations):
            n = tf.reshape(iterations, [])

            def cond(i, x):
                return tf.less(i, n)

            def body(i, x):
                return i + 1, x + tf.constant(1.0, tf.float32)

            _, x = tf.while_loop(cond, body, (tf.constant(0, tf.int32), tf.constant(0.0, tf.float32)),
                                 parallel_iterations=1)
            return {"value": tf.reshape(x, [1], name="value")}

    module = Spin()
    sm = tempfile.mkdtemp(prefix="edge_infer_sm_")
    tf.saved_model.save(module, sm, signatures={"serving_default": module.serve})
    data = convert(sm)
    shutil.rmtree(sm)

    from tensorflow.lite.python import schema_py_generated as schema

    fb = schema.Model.GetRootAsModel(data, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    ops = sorted(op_names[max(fb.OperatorCodes(i).BuiltinCode(), fb.OperatorCodes(i).DeprecatedBuiltinCode())]
                 for i in range(fb.OperatorCodesLength()))
    assert ops == ["ADD", "LESS", "RESHAPE", "WHILE"], ops  # no CUSTOM / Flex ops

    interp = tf.lite.Interpreter(model_content=data, num_threads=1)
    runner = interp.get_signature_runner()
    for n in (0, 1, 10, 1000, -5):
        got = runner(iterations=np.array([n], dtype=np.int32))["value"]
        assert got.dtype == np.float32 and got.shape == (1,), (got.dtype, got.shape)
        assert got[0] == spin_reference(n), (n, got)
    write_model("spin_int32.tflite", data)
    d = describe(data)
    assert [x["dtype"] for x in d["inputs"]] == ["int32"] and d["inputs"][0]["shape"] == [1], d
    assert [x["dtype"] for x in d["outputs"]] == ["float32"] and d["outputs"][0]["shape"] == [1], d
    d["ops"] = ops
    summary["spin_int32.tflite"] = d


# ------------------------------------------------------------------------ shapes
def build_shapes(summary: dict) -> None:
    """A small CNN that tells a circle, a square, a triangle or no shape on a 96x96 RGB
    picture (models/shapes_synth.py). The input is raw pixel values 0..255: a Rescaling
    layer inside the model divides by 255, so a user needs no mean/std. Full-integer int8
    with int8 input and output; the representative set includes an all-0 and an all-255
    picture so that the input range is exactly [0, 255] (scale 1, zero point -128: every
    pixel value is exact)."""
    labels = shapes_synth.LABELS
    print("[shapes] generating synthetic pictures")
    x_train, y_train = shapes_synth.gen_dataset(3000, seed=SEED + 41)
    x_val, y_val = shapes_synth.gen_dataset(300, seed=SEED + 42)
    x_test, y_test = shapes_synth.gen_dataset(1000, seed=SEED + 43)
    rep_x, _ = shapes_synth.gen_dataset(25, seed=SEED + 44)

    seed_all(SEED + 40)
    inp = keras.Input(shape=(96, 96, 3), name="image")
    h = keras.layers.Rescaling(1.0 / 255.0, name="scale")(inp)
    for i, (ch, stride) in enumerate(SHAPES_CONVS):
        h = keras.layers.Conv2D(ch, 3, strides=stride, padding="same", use_bias=False, name=f"conv{i + 1}")(h)
        h = keras.layers.BatchNormalization(name=f"bn{i + 1}")(h)
        h = keras.layers.ReLU(name=f"relu{i + 1}")(h)
    h = keras.layers.Concatenate(name="pool")(
        [keras.layers.GlobalAveragePooling2D()(h), keras.layers.GlobalMaxPooling2D()(h)]
    )
    out = keras.layers.Dense(len(labels), activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="shapes")
    batch = 64
    steps = SHAPES_EPOCHS * -(-len(y_train) // batch)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(3e-3, steps, alpha=0.02)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    print(f"[shapes] params: {model.count_params()}")
    # The classes do not change under the 8 rotations/flips of the square: every epoch
    # sees each training picture under one of them, drawn anew.
    aug_rng = np.random.default_rng(SEED + 45)
    x_val_f = x_val.astype(np.float32)
    for epoch in range(SHAPES_EPOCHS):
        print(f"[shapes] epoch {epoch + 1}/{SHAPES_EPOCHS}")
        model.fit(dihedral(x_train, aug_rng).astype(np.float32), y_train, validation_data=(x_val_f, y_val),
                  epochs=1, batch_size=batch, shuffle=True, verbose=2)
    keras_acc = float(np.mean(np.argmax(model.predict(x_test.astype(np.float32), verbose=0), axis=1) == y_test))
    print(f"[shapes] keras held-out accuracy: {keras_acc:.4f} on {len(y_test)} pictures")

    sm = export_saved_model(lambda image: {"probs": model(image, training=False)},
                            [tf.TensorSpec([1, 96, 96, 3], tf.float32, name="image")], model)
    rep_all = np.concatenate([np.zeros((1, 96, 96, 3), np.uint8), np.full((1, 96, 96, 3), 255, np.uint8),
                              rep_x])

    def rep():
        for x in rep_all:
            yield {"image": x[None].astype(np.float32)}

    data = convert(sm, rep_data=rep, io_type=tf.int8)
    shutil.rmtree(sm)
    name = "shapes_int8.tflite"
    d = describe(data)
    (s_in, z_in), (s_out, z_out) = ((d[k][0]["scale"], d[k][0]["zero_point"]) for k in ("inputs", "outputs"))
    assert d["inputs"][0]["shape"] == [1, 96, 96, 3] and d["inputs"][0]["dtype"] == "int8", d["inputs"]
    assert d["outputs"][0]["shape"] == [1, len(labels)] and d["outputs"][0]["dtype"] == "int8", d["outputs"]
    print(f"[shapes] input scale {s_in} zero point {z_in}; output scale {s_out} zero point {z_out}; "
          f"ops {tflite_op_names(data)}")
    pred = np.array([np.argmax(tflite_eval(data, {"image": x[None].astype(np.float32)})["probs"])
                     for x in x_test])
    acc = float(np.mean(pred == y_test))
    per_class = {lab: float(np.mean(pred[y_test == i] == i)) for i, lab in enumerate(labels)}
    print(f"[shapes] {name} held-out accuracy: {acc:.4f} on {len(y_test)} pictures; per class {per_class}")
    if acc < 0.95:
        raise SystemExit(f"{name}: held-out accuracy {acc:.4f} is below 0.95")
    write_model(name, data)
    d["params"] = int(model.count_params())
    d["ops"] = tflite_op_names(data)
    d["heldout_accuracy"] = acc
    d["heldout_accuracy_per_class"] = per_class
    d["keras_heldout_accuracy"] = keras_acc
    summary[name] = d
    (HERE / "shapes.labels").write_text("\n".join(labels) + "\n")
    print("  wrote shapes.labels")


SHAPES_EPOCHS = 20
# (channels, stride) of the 3x3 convolutions.
SHAPES_CONVS = ((12, 2), (24, 2), (40, 2), (40, 1), (56, 2))


def dihedral(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each picture of x [N, H, W, C] rotated by k x 90 degrees and, for k' >= 4,
    mirrored: one of the 8 symmetries of the square, drawn per picture."""
    out = np.empty_like(x)
    t = rng.integers(0, 8, len(x))
    for k in range(8):
        sel = t == k
        a = np.rot90(x[sel], k % 4, axes=(1, 2))
        out[sel] = a[:, :, ::-1] if k >= 4 else a
    return out


# ------------------------------------------------------------------------ edgetpu
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"  # libedgetpu: tflite/public/edgetpu.h, kCustomOp
EDGETPU_TWIN = "har_accel_int8.tflite"


def edgetpu_custom_options(twin: bytes) -> bytes:
    """What edgetpu_compiler puts in the custom op's custom_options: a FlexBuffers map with
    the keys libedgetpu reads (tflite/custom_op_data.cc: "1" version, "4" the serialized
    executable, "5" execution preference, "6" chip versions, "7" further executables).
    The executable here is a text placeholder naming the CPU twin, not a DarwiNN
    executable: the file has the layout of a compiled model, but a real Edge TPU would
    reject it."""
    from flatbuffers import flexbuffers

    placeholder = (f"edge-infer test model: not an Edge TPU executable; CPU twin {EDGETPU_TWIN} "
                   f"sha256 {hashlib.sha256(twin).hexdigest()}")
    opts = bytes(flexbuffers.Dumps({"1": 0, "4": placeholder, "5": 0, "6": [0], "7": []}))
    back = flexbuffers.Loads(opts)
    assert back["4"] == placeholder and back["6"] == [0], back
    return opts


def static_details(data: bytes) -> dict:
    """describe() without an interpreter (TF Lite cannot build one for a model whose custom
    op it does not know): the main subgraph's inputs and outputs and the signatures, read
    from the flatbuffer, with describe()'s keys."""
    from tensorflow.lite.python import schema_py_generated as schema

    dtypes = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    m = schema.ModelT.InitFromPackedBuf(data, 0)
    sg = m.subgraphs[0]

    def det(i):
        t = sg.tensors[i]
        q = t.quantization
        scale = float(q.scale[0]) if q is not None and q.scale is not None and len(q.scale) else 0.0
        zp = int(q.zeroPoint[0]) if q is not None and q.zeroPoint is not None and len(q.zeroPoint) else 0
        shape = [int(v) for v in t.shape]
        sig = [int(v) for v in t.shapeSignature] if t.shapeSignature is not None else shape
        return {"index": int(i), "name": t.name.decode(), "shape": shape, "shape_signature": sig,
                "dtype": dtypes[t.type], "scale": scale, "zero_point": zp}

    sigs = {d.signatureKey.decode(): {"inputs": sorted(x.name.decode() for x in d.inputs),
                                      "outputs": sorted(x.name.decode() for x in d.outputs)}
            for d in (m.signatureDefs or [])}
    return {"inputs": [det(i) for i in sg.inputs], "outputs": [det(i) for i in sg.outputs],
            "signatures": sigs, "bytes": len(data)}


def edgetpu_model(twin: bytes) -> bytes:
    """The twin with its whole main subgraph replaced by one CUSTOM operator
    "edgetpu-custom-op", the way edgetpu_compiler writes a model whose every op maps to
    the Edge TPU: the subgraph keeps only its input and output tensors (names, shapes,
    types, quantization as they were), the operator reads the inputs and writes the
    outputs, the weights live inside the (here placeholder) executable. Signatures and
    metadata are kept, with buffers renumbered."""
    from flatbuffers import Builder
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromPackedBuf(twin, 0)
    assert len(m.subgraphs) == 1, "the twin must have one subgraph (no control flow)"
    sg = m.subgraphs[0]
    keep = list(sg.inputs) + list(sg.outputs)
    assert len(set(keep)) == len(keep), "a tensor is both an input and an output"
    new_index = {old: new for new, old in enumerate(keep)}

    # Buffer 0 is the empty sentinel every TFLite file starts with; each tensor gets its
    # own empty buffer, as the converter does; metadata keeps its bytes.
    buffers = [schema.BufferT()]
    tensors = []
    for old in keep:
        t = sg.tensors[old]
        assert m.buffers[t.buffer].data is None, f"{t.name} is a constant"
        t.buffer = len(buffers)
        buffers.append(schema.BufferT())
        tensors.append(t)
    for md in m.metadata or []:
        buffers.append(m.buffers[md.buffer])
        md.buffer = len(buffers) - 1
    assert m.metadataBuffer is None

    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.CUSTOM
    code.deprecatedBuiltinCode = schema.BuiltinOperator.CUSTOM
    code.customCode = EDGETPU_CUSTOM_OP
    code.version = 1
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [new_index[i] for i in sg.inputs]
    op.outputs = [new_index[i] for i in sg.outputs]
    op.customOptions = list(edgetpu_custom_options(twin))
    op.customOptionsFormat = schema.CustomOptionsFormat.FLEXBUFFERS

    sg.tensors = tensors
    sg.inputs = [new_index[i] for i in sg.inputs]
    sg.outputs = [new_index[i] for i in sg.outputs]
    sg.operators = [op]
    m.operatorCodes = [code]
    m.buffers = buffers
    for sig in m.signatureDefs or []:
        for tm in list(sig.inputs) + list(sig.outputs):
            tm.tensorIndex = new_index[tm.tensorIndex]

    b = Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def build_edgetpu(summary: dict) -> None:
    """har_accel_int8_edgetpu.tflite from the committed (or just built) har_accel_int8.tflite,
    its exact CPU twin (`cpu_path`). Checks: only the custom op is left; the inputs, outputs
    and signature equal the twin's (tensor indices aside); TF Lite cannot allocate it
    without the Edge TPU delegate and names the custom op."""
    from tensorflow.lite.python import schema_py_generated as schema

    name = "har_accel_int8_edgetpu.tflite"
    twin_path = HERE / EDGETPU_TWIN
    if not twin_path.exists():
        raise SystemExit(f"{name} is made from {EDGETPU_TWIN}: build step `har` first")
    twin = twin_path.read_bytes()
    data = edgetpu_model(twin)

    fb = schema.ModelT.InitFromPackedBuf(data, 0)
    codes = [(c.builtinCode, c.customCode) for c in fb.operatorCodes]
    assert codes == [(schema.BuiltinOperator.CUSTOM, EDGETPU_CUSTOM_OP.encode())], codes
    assert len(fb.subgraphs[0].operators) == 1, fb.subgraphs[0].operators
    d, t = static_details(data), describe(twin)
    for key in ("inputs", "outputs"):
        got = [{k: v for k, v in x.items() if k != "index"} for x in d[key]]
        want = [{k: v for k, v in x.items() if k != "index"} for x in t[key]]
        assert got == want, (key, got, want)
    assert d["signatures"] == t["signatures"], (d["signatures"], t["signatures"])
    # The interpreter builds (an unresolved custom op gets a placeholder that a delegate may
    # claim), and allocation, where nothing claimed it, fails naming the op.
    try:
        tf.lite.Interpreter(model_content=data).allocate_tensors()
    except RuntimeError as e:
        assert f"unresolved custom op: {EDGETPU_CUSTOM_OP}" in str(e), e
        print(f"[edgetpu] TF Lite without the delegate: {' '.join(str(e).split())[:160]}")
    else:
        raise SystemExit(f"{name}: TF Lite ran it without the Edge TPU delegate")
    write_model(name, data)
    d["ops"] = [EDGETPU_CUSTOM_OP]
    d["cpu_twin"] = EDGETPU_TWIN
    summary[name] = d


def main() -> None:
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, numpy {np.__version__}")
    only = set(sys.argv[1:])
    summary: dict = {"tensorflow": tf.__version__, "keras": keras.__version__}
    # mobilenet_dynamic, shapes and edgetpu come last so that a partial build, which appends
    # new entries to the existing models_summary.json, gives the same key order as a full
    # build. edgetpu reads har_accel_int8.tflite, so it runs after har.
    steps = {"har": build_har, "mobilenet": build_mobilenet, "multi_io": build_multi_io,
             "dynamic": build_dynamic, "lookup": build_lookup, "spin": build_spin,
             "mobilenet_dynamic": build_mobilenet_dynamic, "shapes": build_shapes,
             "edgetpu": build_edgetpu}
    unknown = only - steps.keys()
    if unknown:
        raise SystemExit(f"unknown step(s) {sorted(unknown)}; steps: {', '.join(steps)}")
    for key, step in steps.items():
        if not only or key in only:
            step(summary)
    path = HERE / "models_summary.json"
    if only and path.exists():
        # Partial build: replace only the entries of the models just built.
        merged = json.loads(path.read_text())
        merged.update(summary)
        summary = merged
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print("  wrote models_summary.json")


if __name__ == "__main__":
    main()
