#!/usr/bin/env python3
"""Writes the issue 13 section of BENCHMARKS.md from bench/accelerators.sh's results.

    accelerators_report.py RESULTS_DIR OUT

RESULTS_DIR holds floor_MODEL_ACC.json (edge-infer-bench floor, ACC = cpu,
gpu, gpu16), delegate_mobilenet_v2_int8.json, switch_MODEL.json (the load
run), switch_MODEL.trace (one JSON line per answer), switch_MODEL.health.json,
switch_MODEL.moved / .back (the daemon's log lines counted) and meta.json.
OUT is the Markdown file whose section "## Issue 13: accelerators" is
replaced (or inserted before "## Notes and findings", else at the end); `-`
prints the section only. The section is printed to stdout either way.
Standard library only.
"""

import glob
import json
import os
import re
import sys

HEADING = "## Issue 13: accelerators"
FLOOR_MODELS = ["har_accel_f32", "har_accel_int8", "multi_io_f32", "shapes_int8", "mobilenet_v2_int8"]
ACCELS = [("cpu", "cpu"), ("gpu", "gpu"), ("gpu16", "gpu, fp16 allowed")]
DELEGATE = "testdelegate"


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def num(v, digits=3):
    """A figure as the rest of BENCHMARKS.md prints them."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def sci(v):
    if v is None:
        return "–"
    if v == 0:
        return "0"
    return f"{v:.1e}"


def quantile(vals, q):
    """Nearest rank: a value that was measured."""
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    k = max(0, min(len(vals) - 1, int(-(-q * len(vals) // 1)) - 1))
    return vals[k]


def median(vals):
    vals = sorted(v for v in vals if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def delegation_text(d):
    if not d:
        return "–"
    kind = d.get("kind")
    if kind == "partial":
        a, b = d.get("delegated_nodes"), d.get("total_nodes")
        return f"partial ({a} of {b} nodes)" if a is not None and b is not None else "partial"
    return kind or "–"


# -- 1. the floor -------------------------------------------------------------

def floor_rows(res):
    rows = ["| model | accelerator | delegation | load + compile + warm-up ms: first / first, disk cache warm "
            "/ again in process | invoke p50 µs "
            "| p95 µs | p99 µs | invokes timed | p50 / cpu's | max abs diff vs cpu | max abs diff vs reference |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    unavailable = []
    for model in FLOOR_MODELS:
        cpu = load(f"{res}/floor_{model}_cpu.json")
        for acc, label in ACCELS:
            d = load(f"{res}/floor_{model}_{acc}.json")
            if d is None:
                continue
            if "unavailable" in d:
                rows.append(f"| {model} | {label} | **unavailable** | – | – | – | – | – | – | – | – |")
                unavailable.append((model, label, d["unavailable"]))
                continue
            rel = "–"
            if acc != "cpu" and cpu and cpu.get("p50_us") and d.get("p50_us") is not None:
                rel = f"{d['p50_us'] / cpu['p50_us']:.1f}x"
            q = d.get("max_q_diff_vs_cpu")
            vs_cpu = "–" if acc == "cpu" else sci(d.get("max_abs_diff_vs_cpu")) + (
                f" ({q} step{'s' if q != 1 else ''})" if q is not None else "")
            rows.append(
                f"| {model} | {label} | {delegation_text(d.get('delegation'))} "
                f"| {num(d.get('load_ms'))} / {num((load(f'{res}/floor_{model}_{acc}.cached.json') or {}).get('load_ms'))}"
                f" / {num(d.get('reload_ms'))} "
                f"| {num(d.get('p50_us'))} | {num(d.get('p95_us'))} | {num(d.get('p99_us'))} | {num(d.get('iters'))} "
                f"| {rel} | {vs_cpu} | {sci(d.get('max_abs_diff_vs_reference'))} |")
    return rows, unavailable


# -- 2. the switch ------------------------------------------------------------

def trace_groups(path):
    """Results in order of their messages, grouped by what served them: the
    message an invoke failure moved (answered from the cpu right after one
    the delegate answered), the first back on the delegate (the retry's
    engine swapped in before it), and the steady ones on either."""
    try:
        lines = [json.loads(l) for l in open(path) if l.strip()]
    except (OSError, ValueError):
        return None
    results = sorted((l for l in lines if "seq" in l), key=lambda l: l["seq"])
    groups = {"delegate": [], "cpu": [], "switch": [], "back": [], "errors": [l for l in lines if "error" in l]}
    prev = None
    for r in results:
        acc = r.get("accelerator")
        if acc == "cpu" and prev == DELEGATE:
            groups["switch"].append(r)
        elif acc == DELEGATE and prev == "cpu":
            groups["back"].append(r)
        elif acc == DELEGATE:
            groups["delegate"].append(r)
        else:
            groups["cpu"].append(r)
        prev = acc
    groups["n"] = len(results)
    return groups


def lat(r, stage):
    return (r.get("latency_ms") or {}).get(stage)


def trio(rs, f, quantiles=(0.5, 0.99)):
    vals = [f(r) for r in rs]
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    return " / ".join(num(quantile(vals, q)) for q in quantiles) + f" / {num(max(vals))}"


def health_switches(h):
    for m in (h or {}).get("models", []):
        if m.get("name") == "acc":
            return (m.get("acceleration") or {}).get("switches")
    return None


def switch_section(res, meta):
    L = []
    floor_est = {}
    for path in sorted(glob.glob(f"{res}/switch_*.trace")):
        name = os.path.basename(path)[len("switch_"):-len(".trace")]
        g = trace_groups(path)
        run = load(f"{res}/switch_{name}.json") or {}
        if g is None:
            continue
        cpu_floor = load(f"{res}/floor_{name}_cpu.json") or {}
        moved, back = read_text(f"{res}/switch_{name}.moved"), read_text(f"{res}/switch_{name}.back")
        hs = health_switches(load(f"{res}/switch_{name}.health.json"))
        L += [f"#### {name}", ""]
        L += [f"{num(run.get('sent'))} messages sent, {num(g['n'])} results, {num(run.get('lost'))} lost, "
              f"{num(run.get('errors'))} errors, {num(run.get('duplicates'))} duplicates. Switches to the cpu: "
              f"{len(g['switch'])} in the results, {moved or '–'} in the daemon's log, {num(hs)} in health; "
              f"back on the delegate: {len(g['back'])} in the results, {back or '–'} in the log.", ""]
        L += ["| messages | n | daemon total ms: p50 / p99 / max | invoke ms: p50 / p99 / max "
              "| end to end ms: p50 / p99 / max |", "|---|---|---|---|---|"]
        for key, label in (("delegate", "on the delegate"),
                           ("cpu", "on the cpu, after a switch"),
                           ("switch", "**the failing message** (failed invoke, cpu load + compile + warm-up, "
                                      "run again)"),
                           ("back", "the first back on the delegate (retry's engine swapped in)")):
            rs = g[key]
            L.append(f"| {label} | {len(rs)} | {trio(rs, lambda r: lat(r, 'total'))} "
                     f"| {trio(rs, lambda r: lat(r, 'invoke'))} | {trio(rs, lambda r: r.get('e2e_ms'))} |")
        sw = [lat(r, "invoke") for r in g["switch"]]
        steady = [lat(r, "invoke") for r in g["delegate"] + g["cpu"]]
        floor_est[name] = {
            "switch_invoke_median": median(sw),
            "switch_total_median": median([lat(r, "total") for r in g["switch"]]),
            "steady_invoke_p50": quantile(steady, 0.5),
            "steady_invoke_p99": quantile(steady, 0.99),
            "cpu_reload_ms": cpu_floor.get("reload_ms"),
            "cpu_p50_ms": (cpu_floor.get("p50_us") or 0) / 1000 if cpu_floor.get("p50_us") else None,
            "n": len(sw),
        }
        L += [""]
    return L, floor_est


def mobilenet_check(res):
    d = load(f"{res}/delegate_mobilenet_v2_int8.json")
    if d is None:
        return None
    if d.get("failed"):
        return ("the test delegate's fail_invoke_at=2 made the floor of mobilenet_v2_int8 fail: it does take "
                "part of the graph (see floor.log)")
    cpu = load(f"{res}/floor_mobilenet_v2_int8_cpu.json") or {}
    # The warm-up inference at load, --warmup 1, then the timed ones.
    ran = (d.get("iters") or 0) + 2
    text = (f"mobilenet_v2_int8 with the test delegate (ops ADD, RELU6, FULLY_CONNECTED, RESHAPE, SOFTMAX, "
            f"`fail_invoke_at=2`): delegation **{delegation_text(d.get('delegation'))}**, {ran} invokes ran and "
            "none failed: the delegate computes float32 ops only, takes no node of an int8 model, and counts "
            "invokes in the kernel of its first partition, so with no partition it never fails one.")
    if cpu.get("p50_us") and d.get("p50_us") is not None:
        q = d.get("max_q_diff_vs_cpu")
        text += (f" Found on the way: the model then runs on LiteRT's built-in CPU kernels, not XNNPACK (a "
                 "delegate gets an environment of its own with auto-registration off): invoke p50 "
                 f"{num(d['p50_us'])} µs against {num(cpu['p50_us'])} µs on `cpu` "
                 f"({d['p50_us'] / cpu['p50_us']:.1f}x), outputs up to {sci(d.get('max_abs_diff_vs_cpu'))}"
                 + (f" ({q} quantization steps)" if q is not None else "")
                 + f" from XNNPACK's (which match the reference to {sci(cpu.get('max_abs_diff_vs_reference'))}). "
                 "Through LiteRT, the nodes an Edge TPU delegate leaves to the CPU would run there too.")
    return text


def gpu_summary(res):
    """One bullet from the gpu rows: how close, how slow, the first load."""
    rows = []
    for model in FLOOR_MODELS:
        cpu, gpu = (load(f"{res}/floor_{model}_{a}.json") for a in ("cpu", "gpu"))
        if gpu and "load_ms" in gpu:
            rows.append((model, cpu or {}, gpu, load(f"{res}/floor_{model}_gpu.cached.json") or {}))
    if not rows:
        return []
    floats = [g.get("max_abs_diff_vs_cpu") for _, _, g, _ in rows if g.get("max_q_diff_vs_cpu") is None]
    steps = [(m, g.get("max_q_diff_vs_cpu")) for m, _, g, _ in rows if g.get("max_q_diff_vs_cpu") is not None]
    ratios = [g["p50_us"] / c["p50_us"] for _, c, g, _ in rows if c.get("p50_us") and g.get("p50_us")]
    slowest = max(rows, key=lambda r: r[2].get("load_ms") or 0)
    parts = []
    floats = [f for f in floats if f is not None]
    if floats:
        parts.append(f"float models' outputs within {sci(max(floats))} of the cpu's")
    if steps:
        parts.append("int8 models' within " + ", ".join(f"{q} step{'s' if q != 1 else ''} ({m})" for m, q in steps))
    if ratios:
        parts.append(f"invokes {min(ratios):.0f}x to {max(ratios):.0f}x slower than XNNPACK's (p50)")
    m, _, g, cached = slowest
    parts.append(f"the first load of {m} took {num((g.get('load_ms') or 0) / 1000)} s with an empty shader cache "
                 f"(compiling its shaders), {num((cached.get('load_ms') or 0) / 1000)} s with Mesa's disk cache "
                 f"filled and {num(g.get('reload_ms'))} ms again in the same process")
    full = all((g.get("delegation") or {}).get("kind") == "full" for _, _, g, _ in rows)
    ran = "every model ran fully on the `gpu`" if full else "delegation per model in the table"
    return [f"- **GPU (lavapipe)**: {ran}; " + "; ".join(parts) + ". A daemon start "
            "on `gpu` pays the first-load figure; a service whose user cannot write Mesa's cache directory pays "
            "the empty-cache one at every start."]


# -- the section --------------------------------------------------------------

def section(res):
    meta = load(f"{res}/meta.json") or {}
    L = [HEADING, ""]
    L += ["Written by `bench/accelerators.sh` (its own run, not part of the issue 5 run above).", ""]
    commit = meta.get("commit", "?") + (" (with uncommitted changes)" if meta.get("dirty") else "")
    la0, la1 = " ".join(meta.get("loadavg_start", [])), " ".join(meta.get("loadavg_end", []))
    adapters = "; ".join(meta.get("adapters") or []) or "none logged"
    busy0, busy1 = ((meta.get(k) or "").strip().rstrip(";") for k in ("busy_start", "busy_end"))
    L += [
        f"- machine: {meta.get('cores', '?')} cores, {meta.get('cpu', '?')}, Linux {meta.get('kernel', '?')}, "
        "no GPU: the `gpu` accelerator (LiteRT's WebGPU accelerator, Dawn over Vulkan) runs on Mesa's lavapipe "
        f"(mesa-vulkan-drivers {meta.get('mesa') or '?'}), a software Vulkan device on the same CPU cores; "
        f"adapter lines from the runtime: {adapters}",
        f"- runtime: LiteRT {meta.get('litert', '?')}; {meta.get('mosquitto', '?')}",
        f"- commit: `{commit}`",
        f"- command: `{meta.get('command', '?')}` ({num(meta.get('minutes'))} min)",
        f"- load average at the start {la0}, at the end {la1}; processes using >= 20% of a core at the start: "
        f"{busy0 or 'none'}; at the end: {busy1 or 'none'}",
        "",
        "### CPU vs GPU per model (the runtime floor)",
        "",
        "`edge-infer-bench floor MODEL --accelerator cpu|gpu [--gpu-fp16] --threads 1 --fixture F --case C`: "
        "in-process, the LoadOptions the daemon uses, every input from the model's fixture case. "
        "load = `Runtime::load` (compile for the accelerator) plus the warm-up inference, what the daemon "
        "pays before an accelerator serves: *first* in the process (it also sets up the runtime's environment "
        "and, for `gpu`, the device: what a daemon start pays), for `gpu` with an empty Mesa shader cache "
        "(`MESA_SHADER_CACHE_DIR` fresh: a device's first start, or any start of a service that cannot write "
        "the cache) and then in a second process with that cache filled (later starts); *again in process* "
        "with all of it up (what a fallback pays on the worker's thread, and a retry on its own). Then 20 "
        f"untimed invokes and up to {num(meta.get('floor_max_seconds'))} s of timed ones. The differences "
        "are the largest absolute difference over all outputs in their float domain (dequantized for int8; "
        "in quantization steps in brackets) from the same model on the cpu (loaded alongside) and from the "
        "Python interpreter's reference in tests/fixtures.",
        "",
    ]
    rows, unavailable = floor_rows(res)
    L += rows + [""]
    described = sorted({f"`{d['accelerator']}`" + (" (fp16 allowed)" if d.get("gpu_fp16") else "")
                        for d in (load(p) for p in glob.glob(f"{res}/floor_*_gpu*.json"))
                        if d and "accelerator" in d})
    if described:
        L += ["The `gpu` engines described themselves as " + "; ".join(described) + "."]
        if any("not used" in d for d in described):
            L[-1] += (" lavapipe has no fp16 path, so the fp16 row ran the same fp32 computation again: "
                      "its distance from the row above is this machine's run-to-run noise.")
        L += [""]
    for model, label, why in unavailable:
        L.append(f"- {model} on {label}: unavailable here: {why}")
    if unavailable:
        L.append("")
    L += ["**Not a speed claim.** lavapipe computes the GPU's shaders on the CPU cores (llvmpipe threads), "
          "sharing them with XNNPACK and everything else on this machine, so the `gpu` rows show that the "
          "path works and how close its results are, not what a GPU would gain. On a real GPU the load "
          "(shader compilation) and the per-invoke costs are different; measure on the target device.", ""]

    L += ["### The cost of the fallback switch", ""]
    L += [f"The daemon with one model on `accelerators = [\"{DELEGATE}\", \"cpu\"]`, `retry_secs = 1`, one "
          "worker, on a Mosquitto of the benchmark's own, messages at a steady "
          f"{num(meta.get('rate'))}/s for {num(meta.get('switch_seconds'))} s (QoS 0, "
          "`edge-infer-bench load --trace`). The test delegate (tests/delegate/test_delegate.cc, a real external "
          "delegate plugin computing the ops it claims) fails its invoke number "
          f"{meta.get('fail_invoke_at')} (invoke 1 is the warm-up): the model moves to the cpu with that message "
          "in hand, comes back to a new delegate instance after `retry_secs` and fails again, so one run has many "
          "switches. The failing message's `invoke` includes the failed invoke, loading, compiling and warming "
          "the model on the cpu on the worker's thread, and running the message again there; "
          "daemon total = queue to encoded result; end to end = scheduled send to the result's receipt.", ""]
    sw, est = switch_section(res, meta)
    L += sw
    check = mobilenet_check(res)
    mnv2 = load(f"{res}/floor_mobilenet_v2_int8_cpu.json") or {}
    L += ["#### A big model (mobilenet_v2_int8)", ""]
    if check:
        L += [check, ""]
    # What the measured switches cost beyond the floor's cpu load + warm-up
    # and one invoke: the failed invoke, the bookkeeping, the log line.
    extra = {name: e["switch_invoke_median"] - e["cpu_reload_ms"] - e["cpu_p50_ms"]
             for name, e in est.items()
             if None not in (e["switch_invoke_median"], e["cpu_reload_ms"], e["cpu_p50_ms"])}
    if mnv2.get("reload_ms") is not None:
        base = mnv2["reload_ms"] + (mnv2.get("p50_us") or 0) / 1000
        more = median(list(extra.values()))
        L += [f"So no switch of it can be provoked here. What a switch would cost it follows from what the "
              f"fallback does: load + compile + warm-up on the cpu in a process whose runtime is up "
              f"({num(mnv2.get('reload_ms'))} ms, the floor's \"again\" above) plus running the message "
              f"({num(mnv2.get('p50_us'))} µs p50): {num(base)} ms"
              + (f", plus what the measured switches above took beyond those two figures (median "
                 f"{num(more)} ms: the failed invoke, the bookkeeping and the log line): about "
                 f"**{num(base + more)} ms**" if more is not None else "")
              + " added to the failing message, an estimate, not measured end to end.", ""]
    if extra:
        L += ["Measured switches against the floor's figures: " + "; ".join(
            f"{name}: {num(est[name]['switch_invoke_median'])} ms against {num(est[name]['cpu_reload_ms'])} ms "
            f"load + warm-up and {num(est[name]['cpu_p50_ms'])} ms invoke ({num(x)} ms more)"
            for name, x in extra.items()) + ".", ""]

    L += ["### What it means", ""]
    words = []
    for name, e in est.items():
        if e["switch_invoke_median"] is None:
            continue
        words.append(f"{name}: the failing message's invoke took {num(e['switch_invoke_median'])} ms (median of "
                     f"{e['n']} switches; daemon total {num(e['switch_total_median'])} ms) against "
                     f"{num(e['steady_invoke_p50'])} ms p50 / {num(e['steady_invoke_p99'])} ms p99 for the others")
    if words:
        L += ["- **Switch cost**: " + "; ".join(words) + ". The cost is one cpu load, compile and warm-up of the "
              "model on the worker's thread, paid once by the message in hand (which is still answered, from the "
              "cpu) and by the messages queued behind it; the retry of the better accelerator runs on a thread of "
              "its own and is swapped in between messages."]
    L += gpu_summary(res)
    L += ["- **GPU here is a correctness path**: lavapipe shares the CPU cores, so the `gpu` timings say "
          "nothing about a real GPU's speed; the differences from the cpu are what they show.",
          "- **Not measurable on this machine**: a real GPU (Vulkan hardware), a Coral Edge TPU (no libedgetpu "
          "and no TPU here: its path is exercised with the test delegate above), an NPU (no vendor dispatch "
          "library). The switch cost on those adds the device's own failure detection time, which the test "
          "delegate does not model (it fails at once)."]
    load_end = meta.get("loadavg_end") or []
    try:
        loaded = max(float(x) for x in (meta.get("loadavg_start") or []) + load_end) > (meta.get("cores") or 2)
    except ValueError:
        loaded = False
    if loaded or busy0 or busy1:
        L.append("- **Concurrent load**: other processes (builds or test runs of other sessions) ran on the "
                 "same cores during this run (load average and busy processes above), which skews the "
                 "timings, the `gpu` rows most (lavapipe wants every core).")
    return "\n".join(L).rstrip() + "\n"


def write(out, text):
    if out == "-":
        return
    try:
        with open(out) as f:
            old = f.read()
    except OSError:
        old = ""
    pattern = re.compile(r"^" + re.escape(HEADING) + r"\n.*?(?=^## |\Z)", re.M | re.S)
    if pattern.search(old):
        new = pattern.sub(lambda _: text + "\n", old, count=1)
    elif "\n## Notes and findings" in old:
        i = old.index("\n## Notes and findings") + 1
        new = old[:i] + text + "\n" + old[i:]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + text
    with open(out, "w") as f:
        f.write(new)


def main():
    res, out = sys.argv[1], sys.argv[2]
    text = section(res)
    sys.stdout.write(text)
    write(out, text)
    if out != "-":
        print(f"accelerators_report.py: wrote the issue 13 section to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
