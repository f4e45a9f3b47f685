#!/usr/bin/env python3
"""Turns the JSON results of scripts/bench.sh into BENCHMARKS.md.

    report.py RESULTS_DIR OUT.md

Standard library only. Every figure of edge-infer is shown with the ratio
edge-infer / baseline and edge-infer / echo floor beside it.
"""

import glob
import json
import os
import re
import sys

TARGETS = ["echo", "edge-infer", "baseline"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v):,}"
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}g}"
    return str(v)


def ratio(a, b):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.2f}x"


def workload(doc, name):
    if not doc:
        return None
    return next((w for w in doc.get("workloads", []) if w["name"] == name), None)


def fixed(w, rate):
    if not w:
        return None
    return next((r for r in w["fixed"] if r.get("rate") == rate and "skipped" not in r), None)


def sustained_rate(w):
    if not w or not w.get("sustained"):
        return None
    return w["sustained"]["rate"]


def main():
    res, out = sys.argv[1], sys.argv[2]
    meta = load(os.path.join(res, "meta.json")) or {}
    docs = {t: load(os.path.join(res, f"{t}.json")) for t in TARGETS}
    floors = {os.path.basename(p)[6:-5]: load(p) for p in sorted(glob.glob(os.path.join(res, "floor_*.json")))}
    allm = load(os.path.join(res, "coldstart_all_models.json"))
    ei, bl, ec = docs["edge-infer"], docs["baseline"], docs["echo"]
    L = []
    label = "QUICK RUN (short durations: indicative only)" if meta.get("quick") else "full run"
    L += ["# Benchmarks", "",
          f"Written by `scripts/bench.sh` ({label}). Re-run it whenever the hot path changes; "
          "absolute times on this shared machine are noisy, ratios measured in one run are what to trust.", "",
          "## Run", "",
          f"- machine: {meta.get('cores', '?')} cores, {meta.get('cpu', '?')}, Linux {meta.get('kernel', '?')}; "
          f"load average at the end {' '.join(meta.get('loadavg', []))} (the cores are shared with other builds)",
          f"- commit: `{meta.get('commit', '?')}`" + (" (with uncommitted changes in tracked files)" if meta.get("dirty") else ""),
          f"- command: `{meta.get('command', '?')}`",
          (f"- repeats: every target ran {meta['repeat']} times, the targets taking turns; every figure below is the "
           "median over the runs at that place (bench/median.py), and each workload lists the rate every run sustained"
           if meta.get("repeat", 1) > 1 else "- repeats: one run per target"),
          f"- broker: {meta.get('mosquitto', '?')}, own instance on a free loopback port, config as in tests/common/mod.rs plus `set_tcp_nodelay true`",
          f"- durations: fixed rates {meta.get('fixed_seconds')} s each, search trials {meta.get('trial_seconds')} s, "
          f"sustained rate confirmed for {meta.get('confirm_seconds')} s; cold start median of {meta.get('cold_starts')} starts",
          f"- XNNPACK threads: {meta.get('threads', 1)} for both edge-infer and the baseline; edge-infer workers per model: {meta.get('workers', 1)}; "
          + (f"edge-infer and the baseline pinned to CPU(s) {meta['cpus']} (taskset); " if meta.get('cpus') else "")
          + "QoS 0 everywhere; TCP_NODELAY on every client",
          "- load: open loop, send times scheduled in advance, latency from the *scheduled* send time to the result's receipt "
          "(no coordinated omission); lost = not answered within 3 s after the last send; errors = messages on the error topic "
          "(e.g. `overloaded`); \"sustained\" = zero lost, zero errors and p99 <= the SLO "
          f"({(ei or bl or ec or {}).get('slo_p99_ms', 100)} ms, so a queue that grows for the whole run does not count)",
          ""]

    # Runtime floor.
    L += ["## Runtime floor (in-process invoke through model-runtime)", "",
          "| model | threads | p50 µs | p99 µs | invokes/s |", "|---|---|---|---|---|"]
    for key, f in floors.items():
        if f:
            L.append(f"| {os.path.basename(f['model'])} | {f['threads']} | {fmt(f['p50_us'])} | {fmt(f['p99_us'])} | {fmt(f['invokes_per_s'])} |")
    L.append("")

    # Process figures.
    L += ["## Process: cold start and memory", "",
          "Cold start = process start to READY (edge-infer: sd_notify `READY=1` on a socket the harness listens on; "
          "baseline and echo: their ready line, printed once subscribed), with all models of the set loaded and warmed. "
          + model_set_text(meta.get("model_set")), "",
          "| figure | echo floor | edge-infer | baseline | edge-infer / baseline |", "|---|---|---|---|---|"]

    def g(d, k):
        return d.get(k) if d else None
    for label_, k, scale in [("cold start median, ms", "cold_start_median_ms", 1),
                             ("RSS after ready, MB", "idle_rss_kb", 1 / 1024),
                             ("peak RSS (VmHWM) over the whole run, MB", "peak_rss_kb", 1 / 1024)]:
        vals = [g(d, k) * scale if g(d, k) is not None else None for d in (ec, ei, bl)]
        L.append(f"| {label_} | {fmt(vals[0])} | {fmt(vals[1])} | {fmt(vals[2])} | {ratio(vals[1], vals[2])} |")
    if allm:
        L += ["", f"edge-infer with **every shipped model** (config/demo.toml, 5 models): cold start median "
              f"{fmt(allm['cold_start_median_ms'])} ms (all: {', '.join(fmt(x) for x in allm['cold_start_ms'])}), "
              f"peak RSS {fmt(allm['peak_rss_kb'] / 1024)} MB."]
    L.append("")

    names = []
    for d in (ei, bl, ec):
        for w in (d or {}).get("workloads", []):
            if w["name"] not in names:
                names.append(w["name"])
    for name in names:
        we, wb, wf = workload(ei, name), workload(bl, name), workload(ec, name)
        any_w = we or wb or wf
        if any_w.get("title"):
            kind = "messages of" + (" (mean)" if any_w["payload_kind"] == "readings" else "")
            L += [f"## {name}: {any_w['title']}", "",
                  f"{any_w.get('model')}, {kind} {any_w['payload_bytes']:,} bytes. {any_w.get('note') or ''}".rstrip(), ""]
        else:
            L += [f"## {name}: {any_w.get('model')} , {any_w['payload_kind']} payloads of {any_w['payload_bytes']:,} bytes", ""]
        L += ["| figure | echo floor | edge-infer | baseline | edge-infer / baseline | edge-infer / floor |",
              "|---|---|---|---|---|---|"]
        se, sb, sf = sustained_rate(we), sustained_rate(wb), sustained_rate(wf)
        L.append(f"| **sustained rate, msg/s** | {fmt(sf)} | **{fmt(se)}** | {fmt(sb)} | {ratio(se, sb)} | {ratio(se, sf)} |")
        if any((w or {}).get("sustained_runs") for w in (we, wb, wf)):
            def runs(w):
                return ", ".join(fmt(r) for r in (w or {}).get("sustained_runs", [])) or "–"
            L.append(f"| sustained rate of each run | {runs(wf)} | {runs(we)} | {runs(wb)} | | |")
        def cpu_at_sustained(w):
            s = (w or {}).get("sustained") or {}
            return s.get("cpu_s_per_1000")
        ce, cb, cf = cpu_at_sustained(we), cpu_at_sustained(wb), cpu_at_sustained(wf)
        L.append(f"| CPU s / 1,000 msg at the sustained rate | {fmt(cf)} | {fmt(ce)} | {fmt(cb)} | {ratio(ce, cb)} | {ratio(ce, cf)} |")
        rates = []
        for w in (we, wb, wf):
            for r in (w or {}).get("fixed", []):
                if r["rate"] not in rates:
                    rates.append(r["rate"])
        for rate in sorted(rates):
            fe, fb, ff = fixed(we, rate), fixed(wb, rate), fixed(wf, rate)
            for key, lab in [("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"), ("max_ms", "max ms"),
                             ("cpu_s_per_1000", "CPU s / 1,000 msg")]:
                ve, vb, vf = (x.get(key) if x else None for x in (fe, fb, ff))
                L.append(f"| @{fmt(rate)}/s {lab} | {fmt(vf)} | {fmt(ve)} | {fmt(vb)} | {ratio(ve, vb)} | {ratio(ve, vf)} |")
            def lost(w, x):
                if not w:
                    return "–"
                if not x:
                    return "skipped (a lower rate was already overloaded)"
                codes = ", ".join(f"{k} {v:,}" for k, v in (x.get("error_codes") or {}).items())
                return f"{x['lost']:,} / {x['errors']:,}" + (f" ({codes})" if codes else "")
            L.append(f"| @{fmt(rate)}/s lost / errors | {lost(wf, ff)} | {lost(we, fe)} | {lost(wb, fb)} | | |")
        # Where the time goes (the targets' own stage timings, from their results).
        stage_rows = []
        for who, w in (("edge-infer", we), ("baseline", wb)):
            if not w:
                continue
            lowest = next((r for r in w["fixed"] if "skipped" not in r and r.get("stages")), None)
            if lowest:
                st = lowest["stages"]
                stage_rows.append(f"| {who} | {fmt(lowest['rate'])} | " + " | ".join(
                    fmt((st.get(k) or {}).get("p50_ms")) for k in ("queue", "pre", "invoke", "post", "total")) + " |")
        if stage_rows:
            L += ["", "Where the time goes (p50 of the target's own `latency_ms` stages at the lowest rate; "
                  "pre = parse + quantize, post = dequantize + rank + encode; baseline's \"post\" excludes its json.dumps):", "",
                  "| target | at msg/s | queue ms | pre ms | invoke ms | post ms | total ms |", "|---|---|---|---|---|---|---|"]
            L += stage_rows
        L.append("")

    L += targets_section(ec, ei, bl, floors, allm)
    L += targets_issue11(ec, ei, bl)
    L += kept_sections(out)
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            L += [f.read().rstrip()]
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")


def kept_sections(out):
    """The sections bench/delivery.sh (issue 12) and bench/accelerators.sh
    (issue 13) write into the same file, carried over when this run
    rewrites it."""
    try:
        with open(out) as f:
            old = f.read()
    except OSError:
        return []
    kept = []
    for m in re.finditer(r"^## Issue 1[23]: .*?(?=^## |\Z)", old, re.M | re.S):
        kept += [m.group(0).rstrip(), ""]
    return kept


def model_set_text(model_set):
    # Results written before the model set was recorded had these three.
    model_set = model_set or ["har_accel_int8 (JSON)", "mobilenet_v2_int8 (raw)", "mobilenet_v2_int8 (JSON)"]
    n = len(model_set)
    return f"Model set (the models of the workloads run): {', '.join(model_set)} = {n} model instance{'s' if n != 1 else ''}."


def targets_issue11(ec, ei, bl):
    """The rows of issue 11 (windows of readings, images), when those workloads ran."""
    if not any(workload(d, n) for d in (ec, ei, bl) for n in ("har_readings", "mnv2_jpeg")):
        return []
    L = ["## Targets of issue 11", "",
         "Computed by bench/report.py from the `har_readings` and `mnv2_jpeg` sections above.", "",
         "| target | result | figures |", "|---|---|---|"]

    def row(what, ok, figures):
        status = "not measured" if ok is None else ("**met**" if ok else "**missed**")
        L.append(f"| {what} | {status} | {figures} |")

    he, hf = workload(ei, "har_readings"), workload(ec, "har_readings")
    se, sf = sustained_rate(he), sustained_rate(hf)
    row("HAR readings sustained >= 0.6x echo floor (same-size messages)", None if None in (se, sf) else se >= 0.6 * sf,
        f"{fmt(se)} vs floor {fmt(sf)} readings/s ({ratio(se, sf)})")
    je, jb = workload(ei, "mnv2_jpeg"), workload(bl, "mnv2_jpeg")
    sj, sjb = sustained_rate(je), sustained_rate(jb)
    row("MobileNetV2 640x480 JPEG sustained >= 3x Python bridge", None if None in (sj, sjb) else sj >= 3 * sjb,
        f"{fmt(sj)} vs {fmt(sjb)} msg/s ({ratio(sj, sjb)})")
    # The highest fixed rate the bridge sustained: latency is compared where
    # both keep up, not where the bridge's queue grows.
    both = [r["rate"] for r in (jb or {}).get("fixed", [])
            if "skipped" not in r and r.get("sustained") and fixed(je, r["rate"])]
    if both:
        rate = max(both)
        fe, fb = fixed(je, rate), fixed(jb, rate)
        ok = None if fe.get("p99_ms") is None else fe["p99_ms"] <= fb["p99_ms"] and fe.get("sustained", False)
        row(f"MobileNetV2 JPEG p99 at {fmt(rate)} msg/s (the highest fixed rate the bridge sustains): "
            "edge-infer's <= the bridge's", ok,
            f"p50 / p95 / p99 {fmt(fe.get('p50_ms'))} / {fmt(fe.get('p95_ms'))} / {fmt(fe.get('p99_ms'))} ms vs "
            f"{fmt(fb.get('p50_ms'))} / {fmt(fb.get('p95_ms'))} / {fmt(fb.get('p99_ms'))} ms "
            f"({ratio(fe.get('p99_ms'), fb.get('p99_ms'))} at p99)")
    else:
        row("MobileNetV2 JPEG p99 at a rate the bridge sustains", None, "no fixed rate both ran that the bridge sustained")
    L.append("")
    return L


def targets_section(ec, ei, bl, floors, allm):
    if not any(workload(d, n) for d in (ec, ei, bl) for n in ("har_json", "mnv2_raw", "mnv2_json")):
        return []
    L = ["## Targets of issue 5", "",
         "Computed by bench/report.py from the figures above (one sitting; medians when runs were repeated).", "",
         "| target | result | figures |", "|---|---|---|"]

    def row(what, ok, figures):
        status = "not measured" if ok is None else ("**met**" if ok else "**missed**")
        L.append(f"| {what} | {status} | {figures} |")

    he, hb, hf = workload(ei, "har_json"), workload(bl, "har_json"), workload(ec, "har_json")
    se, sb, sf = sustained_rate(he), sustained_rate(hb), sustained_rate(hf)
    row("HAR JSON sustained >= 60% of echo floor", None if None in (se, sf) else se >= 0.6 * sf,
        f"{fmt(se)} vs floor {fmt(sf)} ({ratio(se, sf)})")
    row("HAR JSON sustained >= 3x baseline", None if None in (se, sb) else se >= 3 * sb,
        f"{fmt(se)} vs baseline {fmt(sb)} ({ratio(se, sb)})")
    fe, ff, fb = fixed(he, 1000), fixed(hf, 1000), fixed(hb, 1000)
    if fe and ff:
        d50 = fe["p50_ms"] - ff["p50_ms"]
        d99 = fe["p99_ms"] - ff["p99_ms"]
        row("HAR p50 @1000/s <= floor + 0.1 ms", d50 <= 0.1, f"{fmt(fe['p50_ms'])} vs {fmt(ff['p50_ms'])} ms (+{d50:.3f})")
        row("HAR p99 @1000/s <= floor + 0.3 ms", d99 <= 0.3, f"{fmt(fe['p99_ms'])} vs {fmt(ff['p99_ms'])} ms (+{d99:.3f})")
    else:
        row("HAR p50/p99 @1000/s vs floor", None, "no 1000 msg/s run")
    if fe and fb and fe.get("cpu_s_per_1000") and fb.get("cpu_s_per_1000"):
        row("HAR CPU / 1000 msg <= 1/4 of baseline (@1000/s)", fe["cpu_s_per_1000"] <= fb["cpu_s_per_1000"] / 4,
            f"{fmt(fe['cpu_s_per_1000'])} vs {fmt(fb['cpu_s_per_1000'])} s ({ratio(fe['cpu_s_per_1000'], fb['cpu_s_per_1000'])})")
    else:
        row("HAR CPU / 1000 msg <= 1/4 of baseline", None, "missing run")
    me = workload(ei, "mnv2_raw")
    fl = (floors.get("mnv2_t1") or {}).get("invokes_per_s")
    sr = sustained_rate(me)
    row("MobileNetV2 raw sustained >= 90% of raw invoke rate (1 thread)", None if None in (sr, fl) else sr >= 0.9 * fl,
        f"{fmt(sr)} vs invoke floor {fmt(fl)}/s ({ratio(sr, fl)})")
    je, jb = workload(ei, "mnv2_json"), workload(bl, "mnv2_json")
    sj, sjb = sustained_rate(je), sustained_rate(jb)
    row("MobileNetV2 JSON sustained >= 5x baseline", None if None in (sj, sjb) else sj >= 5 * sjb,
        f"{fmt(sj)} vs {fmt(sjb)} ({ratio(sj, sjb)})")
    pe, pb = (ei or {}).get("peak_rss_kb"), (bl or {}).get("peak_rss_kb")
    row("Peak RSS <= half the baseline's (same model set)", None if None in (pe, pb) else pe <= pb / 2,
        f"{fmt(pe and pe / 1024)} vs {fmt(pb and pb / 1024)} MB ({ratio(pe, pb)})")
    if allm:
        row("RSS <= 40 MB with all shipped models", allm["peak_rss_kb"] / 1024 <= 40, f"{fmt(allm['peak_rss_kb'] / 1024)} MB")
        row("Cold start to READY <= 300 ms (all shipped models)", allm["cold_start_median_ms"] <= 300,
            f"median {fmt(allm['cold_start_median_ms'])} ms")
    else:
        row("RSS / cold start with all shipped models", None, "not run")
    L.append("")
    return L


if __name__ == "__main__":
    main()
