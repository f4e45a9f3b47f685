#!/usr/bin/env python3
"""The straightforward Python bridge a user would write instead of edge-infer.

paho-mqtt callback, json, numpy, Pillow and the ai_edge_litert Interpreter:
every message is handled in paho's network thread (decode, quantize, invoke,
dequantize, encode, publish). Same models, same payloads and the same result
JSON fields as edge-infer (README "Message formats"), quantized and
dequantized the same way, same threads. Payloads per model:

- json: {"id", "data"}; raw: the tensor's bytes;
- readings: one JSON object per reading ({"ts": .., "ax": .., ..}), an array
  of them or {"id", "readings": [..]}; a dict of per-stream lists (the stream
  is the level the filter's first '+' matched), a window of `size` readings
  every `stride`, invoked when complete;
- image: a JPEG/PNG file, decoded with Pillow, resized (bilinear) to the
  input's height and width, (x - mean) / std, quantized.

scripts/bench.sh measures it side by side with edge-infer and the echo floor,
at QoS 1 (`--qos 1`: subscriptions, results and errors; paho's defaults
otherwise, as a user would leave them) for the default settings and at QoS 0
for the fastest ones.

    baseline.py --port P --device-id bench --threads 1 \\
        --model name=har,path=models/har_accel_int8.tflite,input=bench/har/in,output=bench/har/out,payload=json,labels=models/har_accel.labels \\
        --model name=har_stream,path=models/har_accel_int8.tflite,input=bench/imu/+,output=bench/imu-out/{1},payload=readings,fields=ax:ay:az,size=128,stride=64,timestamp=ts \\
        --model name=mnv2jpeg,path=models/mobilenet_v2_int8.tflite,input=cams/+,output=cams-out/{1},payload=image,mean=127.5,std=127.5

It prints "READY" once every subscription is acknowledged.
"""

import argparse
import hashlib
import io
import json
import socket
import sys
import time

import numpy as np
import paho.mqtt.client as mqtt
from ai_edge_litert.interpreter import Interpreter
from PIL import Image


class BadInput(Exception):
    """A message the model cannot take; `code` is the error code published."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def quantize(x, scale, zero_point, dtype):
    """q = clamp(round_half_away(x / scale) + zp), in float32 like TFLite."""
    info = np.iinfo(dtype)
    t = x.astype(np.float32) / np.float32(scale)
    r = np.sign(t) * np.floor(np.abs(t) + np.float32(0.5))
    return np.clip(r + zero_point, info.min, info.max).astype(dtype)


def dequantize(q, scale, zero_point):
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class Model:
    def __init__(self, spec, threads):
        self.name = spec["name"]
        self.path = spec["path"]
        self.input_filter = spec["input"]
        self.output_template = spec["output"]
        self.payload = spec.get("payload", "json")
        if self.payload not in ("json", "raw", "readings", "image"):
            raise SystemExit(f"model {self.name}: payload must be json, raw, readings or image, not {self.payload!r}")
        with open(self.path, "rb") as f:
            self.sha256 = hashlib.sha256(f.read()).hexdigest()
        self.interpreter = Interpreter(model_path=self.path, num_threads=threads)
        self.interpreter.allocate_tensors()
        # Signature names ("accel", "probs") as the daemon reports them, in
        # tensor index order (the LiteRT C API's order).
        sig = next(iter(self.interpreter._get_full_signature_list().values()))
        by_index = {v: k for k, v in sig["outputs"].items()}
        self.inputs = sorted(self.interpreter.get_input_details(), key=lambda d: d["index"])
        self.outputs = sorted(self.interpreter.get_output_details(), key=lambda d: d["index"])
        self.output_names = [by_index.get(d["index"], d["name"]) for d in self.outputs]
        self.labels = None
        self.top_k = None
        if spec.get("labels"):
            with open(spec["labels"]) as f:
                self.labels = [line.strip() for line in f if line.strip()]
            self.top_k = min(5, len(self.labels))
        # Windows: per stream the readings so far (rows) and their timestamps.
        self.fields = spec.get("fields", "").split(":") if spec.get("fields") else []
        self.size = int(spec.get("size", 0) or 0)
        self.stride = int(spec.get("stride", 0) or 0) or self.size
        self.timestamp = spec.get("timestamp")
        self.streams = {}
        if self.payload == "readings" and not (self.fields and self.size > 0):
            raise SystemExit(f"model {self.name}: readings need fields=a:b:.. and size=N")
        # Images: (pixel - mean) / std.
        self.mean = float(spec.get("mean", 0.0))
        self.std = float(spec.get("std", 1.0))
        # Warm up, like the daemon.
        self.interpreter.invoke()

    def matches(self, topic):
        """MQTT filter match; returns the level the first '+' matched."""
        f, t = self.input_filter.split("/"), topic.split("/")
        plus = None
        for i, level in enumerate(f):
            if level == "#":
                return plus or ""
            if i >= len(t):
                return None
            if level == "+":
                plus = plus if plus is not None else t[i]
            elif level != t[i]:
                return None
        return (plus or "") if len(f) == len(t) else None

    def to_input(self, x):
        """Float values to the input tensor (quantized for int8/uint8)."""
        inp = self.inputs[0]
        x = np.asarray(x, dtype=np.float32).reshape(inp["shape"])
        if inp["dtype"] in (np.int8, np.uint8):
            scale, zp = inp["quantization"]
            return quantize(x, scale, zp, inp["dtype"])
        return x

    def add_readings(self, key, doc, received_at):
        """Appends a message's readings to stream `key`; returns the windows
        they complete as (input tensor, window info) pairs."""
        if isinstance(doc, dict) and "readings" in doc:
            readings = doc["readings"]
        elif isinstance(doc, list):
            readings = doc
        else:
            readings = [doc]
        try:
            parsed = [([float(r[f]) for f in self.fields],
                       float(r[self.timestamp]) if self.timestamp else received_at) for r in readings]
        except (KeyError, TypeError, ValueError) as e:
            # Like the daemon: the message is refused and the stream's partial window discarded.
            self.streams.pop(key, None)
            raise BadInput("bad_reading", f"reading without a numeric field: {e}") from e
        stream = self.streams.setdefault(key, {"rows": [], "times": [], "seq": 0})
        windows = []
        for row, ts in parsed:
            stream["rows"].append(row)
            stream["times"].append(ts)
            if len(stream["rows"]) == self.size:
                stream["seq"] += 1
                info = {"key": key, "seq": stream["seq"], "start": stream["times"][0],
                        "end": stream["times"][-1], "readings": self.size}
                windows.append((self.to_input(stream["rows"]), info))
                del stream["rows"][: self.stride]
                del stream["times"][: self.stride]
        return windows

    def image_input(self, payload):
        """A JPEG/PNG file to the input tensor; returns (tensor, image info)."""
        inp = self.inputs[0]
        height, width = int(inp["shape"][1]), int(inp["shape"][2])
        try:
            img = Image.open(io.BytesIO(payload))
            info = {"format": (img.format or "?").lower(), "width": img.width, "height": img.height}
            img = img.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise BadInput("bad_image", f"cannot decode the image: {e}") from e
        x = (np.asarray(img, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)
        return self.to_input(x), info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--device-id", default="bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--qos", type=int, default=0, choices=(0, 1),
                    help="QoS of the subscriptions and of every message published")
    ap.add_argument("--model", action="append", required=True,
                    help="name=..,path=..,input=..,output=..,payload=json|raw|readings|image[,labels=..]"
                         "[,fields=a:b:c,size=N,stride=N,timestamp=ts][,mean=M,std=S]")
    args = ap.parse_args()

    models = [Model(dict(kv.split("=", 1) for kv in m.split(",")), args.threads) for m in args.model]
    errors_topic = f"edge-infer/{args.device_id}/errors"

    def publish_error(client, model, topic, msg_id, code, message, received_at):
        client.publish(errors_topic, json.dumps({
            "id": msg_id, "device_id": args.device_id, "source_topic": topic, "model": model.name,
            "code": code, "message": message, "received_at": received_at, "published_at": time.time(),
        }), qos=args.qos)

    def infer_and_publish(client, model, topic, level, msg_id, x, received_at, t0, extra):
        """Invokes on input tensor x and publishes the result (plus `extra` fields)."""
        inp = model.inputs[0]
        model.interpreter.set_tensor(inp["index"], x)
        t1 = time.perf_counter()
        model.interpreter.invoke()
        t2 = time.perf_counter()
        outputs = []
        first = None
        for name, d in zip(model.output_names, model.outputs):
            y = model.interpreter.get_tensor(d["index"])
            scale, zp = d["quantization"]
            v = dequantize(y, scale, zp) if d["dtype"] in (np.int8, np.uint8) else y.astype(np.float32)
            v = v.reshape(-1)
            if first is None:
                first = v
            outputs.append({"name": name, "shape": [int(n) for n in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
                            "values": [float(f) for f in v]})
        result = {"id": msg_id, "model": model.name, "model_sha256": model.sha256,
                  "device_id": args.device_id, "source_topic": topic,
                  "received_at": received_at}
        top = None
        if model.top_k:
            order = np.argsort(-first, kind="stable")[: model.top_k]
            top = [{"index": int(i), "label": model.labels[i], "score": float(first[i])} for i in order]
        t3 = time.perf_counter()
        result["published_at"] = time.time()
        result["latency_ms"] = {"queue": 0.0, "pre": (t1 - t0) * 1e3, "invoke": (t2 - t1) * 1e3,
                                "post": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        result["outputs"] = outputs
        if top is not None:
            result["top_k"] = top
        result.update(extra)
        out_topic = (model.output_template.replace("{device_id}", args.device_id)
                     .replace("{model}", model.name).replace("{1}", level))
        client.publish(out_topic, json.dumps(result), qos=args.qos)

    def on_message(client, userdata, msg):
        received_at = time.time()
        t0 = time.perf_counter()
        for model in models:
            level = model.matches(msg.topic)
            if level is None:
                continue
            msg_id = None
            try:
                if model.payload == "raw":
                    inp = model.inputs[0]
                    x = np.frombuffer(msg.payload, dtype=inp["dtype"]).reshape(inp["shape"])
                    infer_and_publish(client, model, msg.topic, level, None, x, received_at, t0, {})
                elif model.payload == "image":
                    x, info = model.image_input(msg.payload)
                    infer_and_publish(client, model, msg.topic, level, None, x, received_at, t0, {"image": info})
                elif model.payload == "readings":
                    doc = json.loads(msg.payload)
                    if isinstance(doc, dict):
                        msg_id = doc.get("id")
                    for x, info in model.add_readings(level, doc, received_at):
                        infer_and_publish(client, model, msg.topic, level, msg_id, x, received_at, t0,
                                          {"window": info})
                else:
                    doc = json.loads(msg.payload)
                    msg_id = doc.get("id")
                    x = model.to_input(doc["data"])
                    infer_and_publish(client, model, msg.topic, level, msg_id, x, received_at, t0, {})
            except BadInput as e:
                publish_error(client, model, msg.topic, msg_id, e.code, str(e), received_at)
            except Exception as e:  # a bad message must not kill the bridge
                publish_error(client, model, msg.topic, msg_id, "bad_input", str(e), received_at)

    pending = set()

    def on_connect(client, userdata, flags, reason_code, properties):
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for m in models:
            result, mid = client.subscribe(m.input_filter, qos=args.qos)
            pending.add(mid)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        pending.discard(mid)
        if not pending:
            print("READY", flush=True)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"baseline-{args.device_id}")
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=60)
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.exit(main())
