#!/usr/bin/env python3
"""Turns the JSON results of scripts/bench.sh into BENCHMARKS.md.

    report.py RESULTS_DIR OUT.md

Standard library only. Results are named TARGET-SETTINGS.json (echo,
edge-infer, baseline; defaults, fastest). The default settings are the
headline: their tables come first, every figure of edge-infer with the
ratios edge-infer / baseline and edge-infer / echo floor beside it at the
same QoS; then the fastest settings, the mixed phase, the peak RSS per
phase and the targets of issues 16, 5 and 11. `bench/changes.md` (written
by hand) becomes the "What changed" section, `bench/notes.md` the notes.
"""

import glob
import json
import os
import re
import sys

KINDS = ["echo", "edge-infer", "baseline"]
SETTINGS = ["defaults", "fastest"]
HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS_TEXT = {
    "defaults": "default settings: QoS 1 subscriptions and replies, persistent session, default queues, "
                "threads and workers; load, echo floor and baseline at QoS 1",
    "fastest": "fastest settings: QoS 0 everywhere, clean session (as before issue 16); "
               "echo floor and baseline at QoS 0",
}


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
        return f"{v:.{digits}g}"
    return str(v)


def mb(kb):
    return None if kb is None else kb / 1024


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


def sustained_verdict(w, rate, ref, factor):
    """Whether `w`'s sustained `rate` is at least `factor` times `ref`, and
    the runs' rates when one of them confirmed none. A target whose search
    ran but confirmed no rate in some run (median.py then has no median)
    missed in that run: that is a result, not a figure left unmeasured."""
    runs = (w or {}).get("sustained_runs") or []
    runs_note = ""
    if None in runs:
        runs_note = "; by run: " + ", ".join("none confirmed" if r is None else fmt(r) for r in runs)
    if ref is None:
        return None, runs_note
    if rate is None:
        searched = bool((w or {}).get("search_trials")) or any(r is not None for r in runs)
        return (False if searched else None), runs_note
    return rate >= factor * ref, runs_note


def status(ok):
    return "not measured" if ok is None else ("**met**" if ok else "**missed**")


def load_docs(res):
    """docs[settings][kind]; results of runs before issue 16 (TARGET.json,
    QoS 0 everywhere) count as the fastest settings."""
    docs = {s: {k: load(os.path.join(res, f"{k}-{s}.json")) for k in KINDS} for s in SETTINGS}
    if not any(d for s in SETTINGS for d in docs[s].values()):
        docs["fastest"] = {k: load(os.path.join(res, f"{k}.json")) for k in KINDS}
    return docs


def main():
    res, out = sys.argv[1], sys.argv[2]
    meta = load(os.path.join(res, "meta.json")) or {}
    docs = load_docs(res)
    floors = {os.path.basename(p)[6:-5]: load(p) for p in sorted(glob.glob(os.path.join(res, "floor_*.json")))}
    allm = load(os.path.join(res, "coldstart_all_models.json"))
    ran = [s for s in SETTINGS if any(docs[s].values())]
    any_doc = next((d for s in ran for d in docs[s].values() if d), {})
    L = []
    label = "QUICK RUN (short durations: indicative only)" if meta.get("quick") else "full run"
    L += ["# Benchmarks", "",
          f"Written by `scripts/bench.sh` ({label}). Re-run it whenever the hot path changes; "
          "absolute times on this shared machine are noisy, ratios measured in one run are what to trust.", ""]
    L += run_section(meta, any_doc, docs, res)
    L += floor_section(floors)
    L += process_section(meta, docs, ran, allm)
    if "defaults" in ran:
        L += ["## Default settings (the headline)", "",
              "edge-infer as a new user runs it: the config sets only the device id, the broker, the log level and "
              "the models (name, path, labels, topics, payload and the tables a payload needs); everything else is "
              "the default: QoS 1 subscriptions and replies, a persistent session, `ack = \"answered\"`, the default "
              "queue capacity and byte budget, 1 XNNPACK thread and 1 worker per model. The load generator publishes "
              "at QoS 1; the echo floor and the Python bridge subscribe and answer at QoS 1 (bench/notes.md).", ""]
        for name in workload_names(docs["defaults"]):
            L += workload_section(name, docs["defaults"], "###", stages=True)
    if "fastest" in ran:
        lean = meta.get("confirm_seconds_fastest") is not None
        L += ["## Fastest settings (for comparison)", "",
              "The same daemon and models with QoS 0 subscriptions and replies and a clean session (the settings "
              "of the runs before issue 16); the load, the echo floor and the Python bridge at QoS 0."
              + (f" Lean: only {', '.join(meta.get('fastest_workloads') or []) or 'the selected workloads'}"
                 + (f" (the echo floor {', '.join(meta['echo_fastest_workloads'])}" if meta.get("echo_fastest_workloads") else "")
                 + (f", the baseline {', '.join(meta['baseline_fastest_workloads'])})" if meta.get("baseline_fastest_workloads") else
                    (")" if meta.get("echo_fastest_workloads") else ""))
                 + ", each at its `lean_rates` (bench/workloads.json) and its sustained rate, the search starting "
                 "from the rate the defaults run sustained, confirmed for "
                 f"{fmt(meta.get('confirm_seconds_fastest'))} s, one cold start." if lean else ""), ""]
        for name in workload_names(docs["fastest"]):
            L += workload_section(name, docs["fastest"], "###", stages=False)
        if "defaults" in ran:
            L += defaults_vs_fastest(docs)
    background = load(os.path.join(res, "edge-infer-background.json"))
    L += mixed_section(docs.get("defaults", {}), meta, background)
    L += rss_section(docs, ran)
    L += targets_issue16(docs, allm, meta, background)
    L += changes_section()
    src5 = "fastest" if any(workload(docs["fastest"][k], n) for k in KINDS
                            for n in ("har_json", "mnv2_raw", "mnv2_json")) else "defaults"
    L += targets_section(*(docs[src5][k] for k in KINDS), floors, allm, src5)
    src11 = "defaults" if any(workload(docs["defaults"][k], n) for k in KINDS
                              for n in ("har_readings", "mnv2_jpeg")) else "fastest"
    L += targets_issue11(*(docs[src11][k] for k in KINDS), src11)
    L += kept_sections(out)
    notes = os.path.join(HERE, "notes.md")
    if os.path.exists(notes):
        with open(notes) as f:
            L += [f.read().rstrip()]
    with open(out, "w") as f:
        f.write("\n".join(L) + "\n")


def run_section(meta, any_doc, docs, res):
    cfg = ""
    try:
        with open(os.path.join(res, "edge-infer-defaults.toml")) as f:
            text = f.read()
        # The settings part, up to the first model; paths of the run's
        # temporary folder shortened.
        head = text.split("[[models]]")[0].strip()
        cfg = re.sub(r'"/tmp/[^"]*/', '"<work dir>/', head)
    except OSError:
        pass
    minutes = meta.get("minutes")
    L = ["## Run", "",
         f"- machine: {meta.get('cores', '?')} cores, {meta.get('cpu', '?')}, Linux {meta.get('kernel', '?')}; "
         f"load average at the end {' '.join(meta.get('loadavg', []))} (the cores are shared with other builds)",
         f"- commit: `{meta.get('commit', '?')}`" + (" (with uncommitted changes in tracked files)" if meta.get("dirty") else ""),
         f"- command: `{meta.get('command', '?')}`" + (f" ({fmt(minutes)} min)" if minutes is not None else ""),
         (f"- repeats: every target ran {meta['repeat']} times, the targets taking turns; every figure below is the "
          "median over the runs at that place (bench/median.py; peak RSS: the highest over the runs), and each "
          "workload lists the rate every run sustained"
          if meta.get("repeat", 1) > 1 else "- repeats: one run per target"),
         f"- broker: {meta.get('mosquitto', '?')}, own instance on a free loopback port, config as in tests/common/mod.rs plus `set_tcp_nodelay true`",
         f"- durations: fixed rates {meta.get('fixed_seconds')} s each, search trials {meta.get('trial_seconds')} s, "
         f"sustained rate confirmed for {meta.get('confirm_seconds')} s"
         + (f" ({meta.get('confirm_seconds_fastest')} s at the fastest settings)" if meta.get("confirm_seconds_fastest") is not None else "")
         + f"; cold start median of {meta.get('cold_starts')} starts",
         "- settings: " + "; ".join(f"**{s}**: {SETTINGS_TEXT[s]}" for s in meta.get("settings", SETTINGS) if s in SETTINGS),
         f"- XNNPACK threads: {meta.get('threads') or '1 (the default)'} for both edge-infer and the baseline; "
         f"edge-infer workers per model: {meta.get('workers') or '1 (the default)'}; "
         + (f"edge-infer and the baseline pinned to CPU(s) {meta['cpus']} (taskset); " if meta.get('cpus') else "")
         + "TCP_NODELAY on every client",
         "- load: open loop, send times scheduled in advance, latency from the *scheduled* send time to the result's receipt "
         "(no coordinated omission); lost = not answered within 3 s after the last send; errors = messages on the error topic "
         "(e.g. `overloaded`); \"sustained\" = zero lost, zero errors and p99 <= the SLO "
         f"({fmt(any_doc.get('slo_p99_ms', 100))} ms, so a queue that grows for the whole run does not count); "
         "results are subscribed at QoS 0 at every setting (the consumer is not what is measured)",
         ""]
    if cfg:
        L += ["edge-infer's config at the default settings, all of it but the models (each model: name, path, labels, "
              "topics, payload, and `[models.window]` / `[models.image]` where the payload needs one); the fastest "
              "settings add `qos = 0` and `clean_session = true` under `[mqtt]`:", "", "```toml", cfg, "```", ""]
    return L


def floor_section(floors):
    L = ["## Runtime floor (in-process invoke through model-runtime)", "",
         "| model | threads | p50 µs | p99 µs | invokes/s |", "|---|---|---|---|---|"]
    for f in floors.values():
        if f:
            L.append(f"| {os.path.basename(f['model'])} | {f['threads']} | {fmt(f['p50_us'])} | {fmt(f['p99_us'])} | {fmt(f['invokes_per_s'])} |")
    L.append("")
    return L


def process_section(meta, docs, ran, allm):
    L = ["## Process: cold start and memory", "",
         "Cold start = process start to READY (edge-infer: sd_notify `READY=1` on a socket the harness listens on; "
         "baseline and echo: their ready line, printed once subscribed), with all models of the set loaded and warmed. "
         + model_set_text(meta.get("model_set")), ""]
    for s in ran:
        ec, ei, bl = (docs[s][k] for k in KINDS)
        L += [f"**{s}**", "",
              "| figure | echo floor | edge-infer | baseline | edge-infer / baseline |", "|---|---|---|---|---|"]

        def g(d, k):
            return d.get(k) if d else None
        starts = max((len((d or {}).get("cold_start_ms") or []) for d in (ec, ei, bl)), default=0)
        for label_, k, scale in [(f"cold start median of {starts} start{'s' if starts != 1 else ''}, ms", "cold_start_median_ms", 1),
                                 ("RSS after ready, MB", "idle_rss_kb", 1 / 1024),
                                 ("peak RSS (VmHWM) over the whole run, MB", "peak_rss_kb", 1 / 1024)]:
            vals = [g(d, k) * scale if g(d, k) is not None else None for d in (ec, ei, bl)]
            L.append(f"| {label_} | {fmt(vals[0])} | {fmt(vals[1])} | {fmt(vals[2])} | {ratio(vals[1], vals[2])} |")
        L.append("")
    if allm:
        L += [f"edge-infer with config/demo.toml (every shipped model as the demo serves them; its `har_f32` asks for "
              f"the GPU first): cold start median {fmt(allm['cold_start_median_ms'])} ms (all: "
              f"{', '.join(fmt(x) for x in allm['cold_start_ms'])}), peak RSS {fmt(allm['peak_rss_kb'] / 1024)} MB.", ""]
    return L


def workload_names(docset):
    names = []
    for k in ("edge-infer", "baseline", "echo"):
        for w in (docset.get(k) or {}).get("workloads", []):
            if w["name"] not in names:
                names.append(w["name"])
    return names


def workload_section(name, docset, level, stages):
    ec, ei, bl = (docset.get(k) for k in KINDS)
    we, wb, wf = workload(ei, name), workload(bl, name), workload(ec, name)
    any_w = we or wb or wf
    L = []
    if any_w.get("title"):
        kind = "messages of" + (" (mean)" if any_w["payload_kind"] == "readings" else "")
        L += [f"{level} {name}: {any_w['title']}", "",
              f"{any_w.get('model')}, {kind} {any_w['payload_bytes']:,} bytes. {any_w.get('note') or ''}".rstrip(), ""]
    else:
        L += [f"{level} {name}: {any_w.get('model')}, {any_w['payload_kind']} payloads of {any_w['payload_bytes']:,} bytes", ""]
    L += ["| figure | echo floor | edge-infer | baseline | edge-infer / baseline | edge-infer / floor |",
          "|---|---|---|---|---|---|"]
    se, sb, sf = sustained_rate(we), sustained_rate(wb), sustained_rate(wf)
    L.append(f"| **sustained rate, msg/s** | {fmt(sf)} | **{fmt(se)}** | {fmt(sb)} | {ratio(se, sb)} | {ratio(se, sf)} |")
    if any((w or {}).get("sustained_runs") for w in (we, wb, wf)):
        def runs(w):
            return ", ".join(fmt(r) for r in (w or {}).get("sustained_runs", [])) or "–"
        L.append(f"| sustained rate of each run | {runs(wf)} | {runs(we)} | {runs(wb)} | | |")

    def at_sustained(w, key):
        return ((w or {}).get("sustained") or {}).get(key)
    ce, cb, cf = (at_sustained(w, "cpu_s_per_1000") for w in (we, wb, wf))
    L.append(f"| CPU s / 1,000 msg at the sustained rate | {fmt(cf)} | {fmt(ce)} | {fmt(cb)} | {ratio(ce, cb)} | {ratio(ce, cf)} |")
    pe, pb, pf = (at_sustained(w, "p99_ms") for w in (we, wb, wf))
    L.append(f"| p99 at the sustained rate, ms | {fmt(pf)} | {fmt(pe)} | {fmt(pb)} | | |")
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
            runs = f" (in {x['runs']} of the runs; the others skipped it)" if x.get("runs") else ""
            return f"{fmt(x.get('lost'))} / {fmt(x.get('errors'))}" + (f" ({codes})" if codes else "") + runs
        L.append(f"| @{fmt(rate)}/s lost / errors | {lost(wf, ff)} | {lost(we, fe)} | {lost(wb, fb)} | | |")
    if stages:
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
    return L


def defaults_vs_fastest(docs):
    """What the default settings cost edge-infer and the bridge, per
    workload both settings ran."""
    rows = []
    for name in workload_names(docs["fastest"]):
        for kind in ("edge-infer", "baseline", "echo"):
            wd, wf = workload(docs["defaults"][kind], name), workload(docs["fastest"][kind], name)
            if not (wd and wf):
                continue
            sd, sf = sustained_rate(wd), sustained_rate(wf)
            cd = ((wd.get("sustained") or {}).get("cpu_s_per_1000"))
            cf = ((wf.get("sustained") or {}).get("cpu_s_per_1000"))
            common = [r["rate"] for r in wf["fixed"] if "skipped" not in r and fixed(wd, r["rate"])]
            at = ""
            if common:
                rate = common[0]
                xd, xf = fixed(wd, rate), fixed(wf, rate)
                at = (f"| @{fmt(rate)}/s p99 {fmt(xd.get('p99_ms'))} vs {fmt(xf.get('p99_ms'))} ms, "
                      f"CPU {fmt(xd.get('cpu_s_per_1000'))} vs {fmt(xf.get('cpu_s_per_1000'))} s / 1,000")
            else:
                at = "| –"
            rows.append(f"| {name} | {kind} | {fmt(sd)} | {fmt(sf)} | {ratio(sd, sf)} | {fmt(cd)} vs {fmt(cf)} {at} |")
    if not rows:
        return []
    return ["### Defaults against fastest", "",
            "The same target at both settings (defaults first).", "",
            "| workload | target | sustained, defaults | sustained, fastest | defaults / fastest | CPU s / 1,000 at the sustained rate | at a common fixed rate |",
            "|---|---|---|---|---|---|---|"] + rows + [""]


# The column of the mixed phase on the daemon whose MobileNetV2 models run
# in the background (scripts/bench.sh, `mixed_background`).
BACKGROUND = "edge-infer, MobileNetV2 background"


def mixed_section(docset, meta, background=None):
    parts = [(k, (docset.get(k) or {}).get("mixed")) for k in ("edge-infer", "baseline")]
    parts.insert(1, (BACKGROUND, (background or {}).get("mixed")))
    parts = [(k, m) for k, m in parts if m]
    if not parts:
        return []
    L = ["## Several models at once (mixed phase, default settings)", "",
         f"After its workloads, each target serves HAR JSON at 1,000 msg/s and MobileNetV2 raw at 50% of the rate "
         f"it sustained for `mnv2_raw` earlier in the same run (when the run has none: a fixed "
         f"{fmt(meta.get('mixed_fallback_rate'))} msg/s, bench/notes.md), both at once for "
         f"{fmt(meta.get('fixed_seconds'))} s, two load generators at QoS 1. \"Alone\" is the same target's "
         "`har_json` run at 1,000 msg/s in the same run. CPU is the target's over the phase; \"cores busy\" is "
         "its CPU time over the phase's wall time.", "",
         f"\"{BACKGROUND}\" is the same phase, at the same MobileNetV2 rate, on a daemon started with the defaults "
         "plus `worker_priority = \"background\"` on the MobileNetV2 models (their threads run in `SCHED_IDLE` "
         "from the first message; the default, `auto`, moves a worker there after a window of 64 messages beside "
         "the sensor model); its \"alone\" figures are measured on that daemon just before.", ""]
    errs = [f"{k}: {m['error']}" for k, m in parts if m.get("error")]
    parts = [(k, m) for k, m in parts if not m.get("error")]
    if errs:
        L += ["The mixed phase failed: " + "; ".join(errs), ""]
    if not parts:
        return L

    def part(m, name):
        return next((w for w in m.get("workloads", []) if w["name"] == name), {})
    head = "| figure | " + " | ".join(f"{k} alone | {k} mixed" for k, _ in parts) + " |"
    L += [head, "|---|" + "---|---|" * len(parts)]

    def row(label, fn_alone, fn_mixed):
        cells = []
        for _, m in parts:
            cells += [fn_alone(m), fn_mixed(m)]
        L.append(f"| {label} | " + " | ".join(cells) + " |")

    def rate_text(m):
        p = part(m, "mnv2_raw")
        if not p:
            return "–"
        runs = p.get("rate_runs")
        return f"{fmt(p.get('rate'))} ({p.get('rate_source', '')})" + (
            f"; each run: {', '.join(fmt(r) for r in runs)}" if runs and len(runs) > 1 else "")
    row("MobileNetV2 raw rate, msg/s", lambda m: "", rate_text)
    for key, lab in [("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99"), ("max_ms", "max")]:
        row(f"HAR @1,000/s {lab} ms",
            lambda m, key=key: fmt((part(m, "har_json").get("alone") or {}).get(key)),
            lambda m, key=key: fmt((part(m, "har_json").get("mixed") or {}).get(key)))

    def delta(m):
        a = (part(m, "har_json").get("alone") or {}).get("p99_ms")
        x = (part(m, "har_json").get("mixed") or {}).get("p99_ms")
        return "–" if None in (a, x) else f"{x - a:+.3f}"
    row("HAR p99 mixed − alone, ms", lambda m: "", delta)

    def lost(x):
        if not x:
            return "–"
        codes = ", ".join(f"{k} {v:,}" for k, v in (x.get("error_codes") or {}).items())
        return f"{x['lost']:,} / {x['errors']:,}" + (f" ({codes})" if codes else "")
    row("HAR lost / errors", lambda m: lost(part(m, "har_json").get("alone")),
        lambda m: lost(part(m, "har_json").get("mixed")))
    for key, lab in [("p50_ms", "p50"), ("p99_ms", "p99"), ("max_ms", "max")]:
        row(f"MobileNetV2 {lab} ms", lambda m: "",
            lambda m, key=key: fmt((part(m, "mnv2_raw").get("mixed") or {}).get(key)))
    row("MobileNetV2 lost / errors", lambda m: "", lambda m: lost(part(m, "mnv2_raw").get("mixed")))
    row("CPU s / 1,000 msg (both models)",
        lambda m: fmt((part(m, "har_json").get("alone") or {}).get("cpu_s_per_1000")),
        lambda m: fmt(m.get("cpu_s_per_1000")))
    row("cores busy (CPU time / wall time)", lambda m: "", lambda m: fmt(m.get("cpu_cores")))
    row("peak RSS, MB", lambda m: fmt(mb((part(m, "har_json").get("alone") or {}).get("peak_rss_kb"))),
        lambda m: fmt(mb(m.get("peak_rss_kb"))))
    L.append("")
    for k, m in parts:
        threads = m.get("threads") or []
        if threads:
            L.append(f"- {k}: CPU seconds by thread over the mixed phase: "
                     + ", ".join(f"`{t['name']}` {fmt(t['cpu_s'])}" for t in threads[:8]))
    L.append("")
    return L


def rss_section(docs, ran):
    L = ["## Peak RSS per phase", "",
         "Before each phase the harness resets the target's peak RSS to its current RSS (`echo 5 > /proc/PID/clear_refs`) "
         "and reads `VmHWM` at the phase's end: each figure is the highest RSS during that phase (memory kept from an "
         "earlier phase counts where it is still held). Phases: each fixed rate, the search's trials (they overload the "
         "target on purpose), the confirmation runs, the mixed phase. The whole run's peak is the highest of them and of "
         "the start-up; with repeated runs, the highest over the runs. MB.", ""]
    for s in ran:
        ds = [docs[s][k] for k in KINDS]
        if not any(d and d.get("rss_phases") for d in ds):
            continue
        if any(d and d.get("rss_reset") is False for d in ds):
            L += ["(The peak could not be reset here: each phase reads the peak since start.)", ""]
        order = []
        for d in ds:
            for p in (d or {}).get("rss_phases", []):
                if p["phase"] not in order:
                    order.append(p["phase"])
        L += [f"**{s}**", "", "| phase | echo floor | edge-infer | baseline | edge-infer / baseline |", "|---|---|---|---|---|"]
        for ph in order:
            vals = []
            for d in ds:
                p = next((x for x in (d or {}).get("rss_phases", []) if x["phase"] == ph), None)
                vals.append(mb(p.get("peak_rss_kb")) if p else None)
            L.append(f"| {ph} | {fmt(vals[0])} | {fmt(vals[1])} | {fmt(vals[2])} | {ratio(vals[1], vals[2])} |")
        whole = [mb((d or {}).get("peak_rss_kb")) for d in ds]
        L.append(f"| **whole run** | {fmt(whole[0])} | **{fmt(whole[1])}** | {fmt(whole[2])} | {ratio(whole[1], whole[2])} |")
        L.append("")
    return L


def targets_issue16(docs, allm, meta, background=None):
    d = docs["defaults"]
    ec, ei, bl = (d[k] for k in KINDS)
    if not any((ec, ei, bl)):
        return []
    L = ["## Targets of issue 16", "",
         "Computed by bench/report.py from the figures above: the default settings, the echo floor and the bridge at the "
         "same QoS (1), one sitting (medians when runs were repeated).", "",
         "| target | result | figures |", "|---|---|---|"]

    def row(what, ok, figures):
        L.append(f"| {what} | {status(ok)} | {figures} |")
    he, hf = workload(ei, "har_json"), workload(ec, "har_json")
    se, sf = sustained_rate(he), sustained_rate(hf)
    ok, runs_note = sustained_verdict(he, se, sf, 0.8)
    row("HAR JSON sustained >= 0.8x the echo floor at the same QoS (defaults)",
        ok, f"{fmt(se)} vs floor {fmt(sf)} msg/s ({ratio(se, sf)}){runs_note}")
    fe, ff = fixed(he, 1000), fixed(hf, 1000)
    if fe and ff and None not in (fe.get("p99_ms"), ff.get("p99_ms")):
        d99 = fe["p99_ms"] - ff["p99_ms"]
        row("HAR p99 @1,000/s <= floor + 0.3 ms (defaults)", d99 <= 0.3,
            f"{fmt(fe['p99_ms'])} vs {fmt(ff['p99_ms'])} ms ({d99:+.3f})")
    else:
        row("HAR p99 @1,000/s <= floor + 0.3 ms (defaults)", None, "no 1,000 msg/s run of both")
    ce, cf = (fe or {}).get("cpu_s_per_1000"), (ff or {}).get("cpu_s_per_1000")
    row("HAR CPU / 1,000 msg @1,000/s <= 2x the echo floor's at the same QoS (defaults)",
        None if None in (ce, cf) else ce <= 2 * cf, f"{fmt(ce)} vs {fmt(cf)} s ({ratio(ce, cf)})")
    def mixed_parts(doc):
        m = (doc or {}).get("mixed") or {}
        return {p["name"]: p for p in m.get("workloads", [])}
    defaults_alone = ((mixed_parts(ei).get("har_json") or {}).get("alone") or {}).get("p99_ms")
    for doc, how in [(ei, "defaults"), (background, "MobileNetV2 `worker_priority = \"background\"`")]:
        if doc is background and not doc:
            continue
        parts = mixed_parts(doc)
        har, mn = parts.get("har_json") or {}, parts.get("mnv2_raw") or {}
        a99 = (har.get("alone") or {}).get("p99_ms")
        x99 = (har.get("mixed") or {}).get("p99_ms")
        # HAR alone is the same configuration on both daemons (only the
        # MobileNetV2 models' priority differs), so the background daemon
        # is held to the lower of the two: one noisy alone run must not
        # make its mixed figure look better than it is.
        note = ""
        if doc is background and None not in (a99, defaults_alone) and defaults_alone < a99:
            note = f"; alone: the defaults daemon's {fmt(defaults_alone)} ms, lower than this daemon's {fmt(a99)}"
            a99 = defaults_alone
        row(f"Mixed: HAR p99 @1,000/s with MobileNetV2 at 50% of its sustained rate <= alone + 1 ms ({how})",
            None if None in (a99, x99) else x99 <= a99 + 1.0,
            "–" if None in (a99, x99) else f"{fmt(x99)} vs {fmt(a99)} ms alone ({x99 - a99:+.3f}{note}); "
            f"MobileNetV2 at {fmt(mn.get('rate'))} msg/s, p99 {fmt((mn.get('mixed') or {}).get('p99_ms'))} ms")
        hm, mm = har.get("mixed"), mn.get("mixed")
        if hm and mm:
            ok = hm["lost"] == 0 and hm["errors"] == 0 and mm["lost"] == 0 and mm["errors"] == 0
            row(f"Mixed: neither model loses messages, lost / errors ({how})", ok,
                f"HAR {hm['lost']:,} / {hm['errors']:,}, MobileNetV2 {mm['lost']:,} / {mm['errors']:,}")
        else:
            row(f"Mixed: neither model loses messages ({how})", None, "no mixed phase")
    pe, pb = (ei or {}).get("peak_rss_kb"), (bl or {}).get("peak_rss_kb")
    n = len(meta.get("model_set") or [])
    row(f"Peak RSS over the whole run, overload phases included, <= 32 MB (defaults, {n} models loaded)",
        None if pe is None else pe / 1024 <= 32, "–" if pe is None else f"{pe / 1024:.2f} MB")
    row("Peak RSS <= 0.5x the Python bridge's (defaults, same models)", None if None in (pe, pb) else pe <= pb / 2,
        f"{fmt(mb(pe))} vs {fmt(mb(pb))} MB ({ratio(pe, pb)})")
    for s in ("defaults", "fastest"):
        je, jb = workload(docs[s]["edge-infer"], "mnv2_json"), workload(docs[s]["baseline"], "mnv2_json")
        sj, sjb = sustained_rate(je), sustained_rate(jb)
        ok, runs_note = sustained_verdict(je, sj, sjb, 5)
        row(f"MobileNetV2 JSON sustained >= 5x the bridge, one worker ({s})",
            ok, f"{fmt(sj)} vs {fmt(sjb)} msg/s ({ratio(sj, sjb)}){runs_note}")
    cold = (ei or {}).get("cold_start_median_ms")
    row(f"Cold start to READY < 50 ms (defaults config, {n} models)", None if cold is None else cold < 50,
        f"median {fmt(cold)} ms" + (f"; config/demo.toml {fmt(allm['cold_start_median_ms'])} ms" if allm else ""))
    L.append("")
    return L


def changes_section():
    path = os.path.join(HERE, "changes.md")
    L = ["## What changed", ""]
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    L += [text or "_To be written by hand in bench/changes.md: what changed for issue 16 and what each change measured._", ""]
    return L


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
    return (f"Model set, loaded by edge-infer and the baseline at both settings (the models of the workloads run, "
            f"those the mixed phase needs, and every other shipped model the CPU runs, idle; "
            f"har_accel_int8_edgetpu needs an Edge TPU): {', '.join(model_set)} = {n} model instance{'s' if n != 1 else ''}.")


def targets_issue11(ec, ei, bl, src):
    """The rows of issue 11 (windows of readings, images), when those workloads ran."""
    if not any(workload(d, n) for d in (ec, ei, bl) for n in ("har_readings", "mnv2_jpeg")):
        return []
    L = ["## Targets of issue 11", "",
         f"Computed by bench/report.py from the `har_readings` and `mnv2_jpeg` sections above ({src} settings).", "",
         "| target | result | figures |", "|---|---|---|"]

    def row(what, ok, figures):
        L.append(f"| {what} | {status(ok)} | {figures} |")

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


def targets_section(ec, ei, bl, floors, allm, src):
    if not any(workload(d, n) for d in (ec, ei, bl) for n in ("har_json", "mnv2_raw", "mnv2_json")):
        return []
    L = ["## Targets of issue 5", "",
         f"Computed by bench/report.py from the figures above ({src} settings"
         + (", QoS 0 as issue 5 measured them" if src == "fastest" else "")
         + "; one sitting; medians when runs were repeated).", "",
         "| target | result | figures |", "|---|---|---|"]

    def row(what, ok, figures):
        L.append(f"| {what} | {status(ok)} | {figures} |")

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
        row("HAR p50 @1000/s <= floor + 0.1 ms", d50 <= 0.1, f"{fmt(fe['p50_ms'])} vs {fmt(ff['p50_ms'])} ms ({d50:+.3f})")
        row("HAR p99 @1000/s <= floor + 0.3 ms", d99 <= 0.3, f"{fmt(fe['p99_ms'])} vs {fmt(ff['p99_ms'])} ms ({d99:+.3f})")
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
        f"{fmt(mb(pe))} vs {fmt(mb(pb))} MB ({ratio(pe, pb)})")
    if allm:
        row("RSS <= 40 MB with all shipped models (config/demo.toml)", allm["peak_rss_kb"] / 1024 <= 40,
            f"{fmt(allm['peak_rss_kb'] / 1024)} MB")
        row("Cold start to READY <= 300 ms (all shipped models, config/demo.toml)", allm["cold_start_median_ms"] <= 300,
            f"median {fmt(allm['cold_start_median_ms'])} ms")
    else:
        row("RSS / cold start with all shipped models", None, "not run")
    L.append("")
    return L


if __name__ == "__main__":
    main()
