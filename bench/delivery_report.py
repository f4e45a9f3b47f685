#!/usr/bin/env python3
"""Writes the issue 12 section of BENCHMARKS.md from bench/delivery.sh's results.

    delivery_report.py RESULTS_DIR OUT

RESULTS_DIR holds answered.json, queued.json, tls.json (medians of the
turns, bench/median.py) with answered.repN.json etc., outage-repN.json,
outage-slow.json and meta.json. OUT is the Markdown file whose section
"## Issue 12: at-least-once, TLS, outbox" is replaced (or inserted before
"## Notes and findings", else at the end); `-` prints the section only.
Standard library only.
"""

import glob
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median import merge  # noqa: E402

HEADING = "## Issue 12: at-least-once, TLS, outbox"
# The targets, against the previous behaviour (ack = "queued").
P99_MARGIN_MS = 0.3
SUSTAINED_MIN_RATIO = 0.9


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
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


def ratio(a, b):
    if a is None or b in (None, 0):
        return "–"
    return f"{a / b:.2f}x"


def diff_ms(a, b):
    if a is None or b is None:
        return "–"
    return f"{a - b:+.3f} ms"


def workload(doc):
    return (doc or {}).get("workloads", [{}])[0] if doc else {}


def fixed(doc, rate=1000.0):
    return next((f for f in workload(doc).get("fixed", []) if f.get("rate") == rate), {})


def sustained(doc):
    return workload(doc).get("sustained") or {}


def turn_rates(res, cfg):
    """The sustained rate of each turn (None: every confirmation failed)."""
    return [sustained(load(p)).get("rate") for p in sorted(glob.glob(f"{res}/{cfg}.rep*.json"))]


def runs(res, cfg):
    return ", ".join(num(r) if r else "none" for r in turn_rates(res, cfg))


def turn_median(res, cfg, f):
    """The median over the turns that have the figure `f` picks."""
    vals = sorted(v for v in (f(load(p)) for p in sorted(glob.glob(f"{res}/{cfg}.rep*.json"))) if v is not None)
    if not vals:
        return None
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def median_rate(res, cfg):
    """The median of the turns' sustained rates, a turn without one
    counting as 0 (bench/median.py cannot merge a missing one)."""
    rates = sorted(r or 0 for r in turn_rates(res, cfg))
    if not rates:
        return None
    n = len(rates)
    m = rates[n // 2] if n % 2 else (rates[n // 2 - 1] + rates[n // 2]) / 2
    return m or None


def fixed_rates(doc):
    return [f["rate"] for f in workload(doc).get("fixed", []) if "rate" in f and "p50_ms" in f]


def stage(f, name, q):
    return ((f.get("stages") or {}).get(name) or {}).get(q)


def compare_rows(a, b, res, names, how):
    """Rows of one side-by-side table: a, b are merged drive docs."""
    rows = []

    def row(label, va, vb, rel):
        rows.append(f"| {label} | {num(va)} | {num(vb)} | {rel} |")

    ra, rb = median_rate(res, names[0]), median_rate(res, names[1])
    row("**sustained rate, msg/s** (median of the turns; a turn without one counts as 0)", ra, rb, ratio(rb, ra))
    rows.append(f"| sustained rate of each turn | {runs(res, names[0])} | {runs(res, names[1])} | |")
    ca, cb = (turn_median(res, n, lambda d: sustained(d).get("cpu_s_per_1000")) for n in names)
    row("CPU s / 1,000 msg at the sustained rate", ca, cb, ratio(cb, ca))
    for rate in fixed_rates(a):
        fa, fb = fixed(a, rate), fixed(b, rate)
        at = f"@{num(rate)}/s"
        for q in ("p50", "p95", "p99", "max"):
            label = f"{at} {q} ms"
            if q == "p99" and rate == 1000:
                label = f"**{label}**"
            row(label, fa.get(f"{q}_ms"), fb.get(f"{q}_ms"), diff_ms(fb.get(f"{q}_ms"), fa.get(f"{q}_ms")))
        row(f"{at} CPU s / 1,000 msg", fa.get("cpu_s_per_1000"), fb.get("cpu_s_per_1000"),
            ratio(fb.get("cpu_s_per_1000"), fa.get("cpu_s_per_1000")))
        ba, bb = fa.get("cpu_s_per_1000_broker"), fb.get("cpu_s_per_1000_broker")
        if ba is not None or bb is not None:
            row(f"{at} the broker's CPU s / 1,000 msg", ba, bb, ratio(bb, ba))
        rows.append(f"| {at} lost / errors | {fa.get('lost', '–')} / {fa.get('errors', '–')} | "
                    f"{fb.get('lost', '–')} / {fb.get('errors', '–')} | |")
        rows.append(f"| {at} daemon's own total p50 / p99 ms (queue to encoded) | "
                    f"{num(stage(fa, 'total', 'p50_ms'))} / {num(stage(fa, 'total', 'p99_ms'))} | "
                    f"{num(stage(fb, 'total', 'p50_ms'))} / {num(stage(fb, 'total', 'p99_ms'))} | |")
    row("cold start to READY, ms", (a or {}).get("cold_start_median_ms"), (b or {}).get("cold_start_median_ms"),
        ratio((b or {}).get("cold_start_median_ms"), (a or {}).get("cold_start_median_ms")))
    return [f"| figure | {how[0]} | {how[1]} | {how[2]} |", "|---|---|---|---|"] + rows


def g(d, *path):
    for k in path:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def outage_rows(fast, slow, meta):
    cols = [c for c in (fast, slow) if c]
    head = []
    if fast:
        head.append(f"{num(meta.get('fill_n'))} at {num(meta.get('fill_rate'))}/s, live {num(meta.get('live_rate'))}/s "
                    f"(median of {meta.get('outage_reps')})")
    if slow:
        head.append(f"{num(meta.get('slow_n'))} at {num(meta.get('slow_rate'))}/s, no live")
    rows = [f"| figure | {' | '.join(head)} |", "|---|" + "---|" * len(cols)]

    def row(label, f):
        rows.append(f"| {label} | " + " | ".join(f(c) for c in cols) + " |")

    row("inputs sent while the uplink was down (QoS 1)", lambda c: num(g(c, "fill", "sent")))
    row("**outbox commits, results/s** (from its files' growth)", lambda c: num(g(c, "fill", "commit_rate")))
    row("all stored, s after the last send", lambda c: num(g(c, "fill", "stored_after_last_send_s")))
    row("most results not yet stored while sending (ms of input)",
        lambda c: f"{num(g(c, 'fill', 'max_behind_results'))} ({num(g(c, 'fill', 'max_behind_ms'))} ms)")
    row("outbox on disk, bytes per result", lambda c: num(g(c, "fill", "outbox_bytes_per_result")))
    row("written to storage (/proc write_bytes), bytes per result", lambda c: num(g(c, "fill", "write_bytes_per_result")))
    row("uplink accepting → first result, s (reconnect backoff <= 1 s)", lambda c: num(g(c, "drain", "first_any_after_up_s")))
    row("replay: first to last stored result, s", lambda c: num(g(c, "drain", "drain_s")))
    row("**replay rate, results/s**", lambda c: num(g(c, "drain", "replay_rate")))
    row("uplink accepting → last stored result, s", lambda c: num(g(c, "drain", "last_after_up_s")))
    row("stored results received / duplicates / missing",
        lambda c: f"{num(g(c, 'drain', 'received'))} / {num(g(c, 'drain', 'duplicates'))} / {num(g(c, 'drain', 'missing'))}")
    if fast:
        def live(group):
            def f(c):
                if not g(c, "live", "sent"):
                    return "–"
                n = g(c, "live", group, "received")
                return (f"{num(n)}: {num(g(c, 'live', group, 'p50_ms'))} / {num(g(c, 'live', group, 'p99_ms'))}"
                        f" / {num(g(c, 'live', group, 'max_ms'))}")
            return f
        row("fresh inputs due **during the replay**: n: p50 / p99 / max ms", live("during_drain"))
        row("fresh inputs due after it: n: p50 / p99 / max ms", live("after_drain"))
        row("fresh inputs due before the daemon was back (stored, then replayed): n: p50 / p99 / max ms",
            live("before_back"))
        row("fresh results received / duplicates / missing",
            lambda c: "–" if not g(c, "live", "sent") else
            f"{num(g(c, 'live', 'received'))} / {num(g(c, 'live', 'duplicates'))} / {num(g(c, 'live', 'missing'))}")
    row("health after: outbox records / stored / replayed",
        lambda c: f"{num(g(c, 'health', 'delivery', 'outbox', 'records'))} / "
                  f"{num(g(c, 'health', 'delivery', 'outbox', 'stored'))} / "
                  f"{num(g(c, 'health', 'delivery', 'outbox', 'replayed'))}")
    row("health after: dropped / rejected / expired / write errors / too large",
        lambda c: " / ".join(num(g(c, "health", "delivery", "outbox", k))
                             for k in ("dropped_full", "rejected_full", "expired", "write_errors", "too_large")))
    row("daemon log: ERROR lines / WARN lines",
        lambda c: f"{len(c.get('daemon_log_errors') or [])} / {num(c.get('daemon_log_warnings'))}")
    return rows


def section(res):
    meta = load(f"{res}/meta.json") or {}
    answered, queued, tls = (load(f"{res}/{c}.json") for c in ("answered", "queued", "tls"))
    fast_docs = [d for d in (load(p) for p in sorted(glob.glob(f"{res}/outage-rep*.json"))) if d]
    fast = merge(fast_docs) if fast_docs else None
    slow = load(f"{res}/outage-slow.json")

    L = [HEADING, ""]
    L += ["Written by `bench/delivery.sh` (its own run, not part of the issue 5 run above). "
          "Ratios and differences measured in one sitting are what to trust on this shared machine.", ""]
    cpu = meta.get("cpu", "?")
    la0, la1 = " ".join(meta.get("loadavg_start", [])), " ".join(meta.get("loadavg_end", []))
    commit = meta.get("commit", "?") + (" (with uncommitted changes)" if meta.get("dirty") else "")
    L += [
        f"- machine: {meta.get('cores', '?')} cores, {cpu}, Linux {meta.get('kernel', '?')}; load average "
        f"at the start {la0}, at the end {la1} (the cores are shared with other builds)",
        f"- commit: `{commit}`",
        f"- command: `{meta.get('command', '?')}` ({num(meta.get('minutes'))} min)",
        f"- turns: the three daemon configs (answered, queued, TLS) ran {meta.get('reps')} time(s) each, taking "
        "turns with the first one rotating; every figure is the median over the turns (bench/median.py)",
        f"- broker: {meta.get('mosquitto', '?')}, one instance with a plaintext and a TLS listener on loopback "
        "(bench/broker.sh's config: `set_tcp_nodelay true`, `max_inflight_messages 0`, "
        "`max_queued_messages 100000`), the TLS one with an ECDSA P-256 certificate made by the script; "
        "the generator always on the plaintext one",
        f"- TLS: the daemon (rustls, ring) against this Mosquitto ({meta.get('openssl', '?')}) negotiates "
        f"{meta.get('tls_session', '?').replace('New, ', '')}; {meta.get('tls_temp_key', '?')} "
        "(from `openssl s_client` offering rustls's defaults in rustls's order; Mosquitto picks by its "
        "own preference, which puts AES-256-GCM first)",
        "- daemon: the defaults (QoS 1 subscription and results, persistent session, 1 worker, 1 XNNPACK "
        "thread, queue 4096, outbox on in a temp state dir, log level info); the configs differ only in "
        "`[delivery] ack` and `[mqtt] tls, ca_file`. The broker's sessions of the daemon are cleared "
        "before each start, so no run inherits the previous one's unacknowledged inputs",
        f"- load: HAR JSON (har_accel_int8, 4,312-byte payloads) published at **QoS 1** by "
        "`edge-infer-bench` (open loop, latency from the scheduled send to the result's receipt, results "
        "subscribed at QoS 0); fixed rate 1,000 msg/s for "
        f"{num(meta.get('fixed_seconds'))} s; sustained = the highest rate with nothing lost, no error and "
        f"p99 <= 100 ms (search trials {num(meta.get('trial_seconds'))} s, confirmed for "
        f"{num(meta.get('confirm_seconds'))} s)",
        "",
        "### At-least-once: `ack = \"answered\"` (the default) vs `\"queued\"` (the previous behaviour)",
        "",
    ]
    L += compare_rows(queued, answered, res, ("queued", "answered"),
                      ("`queued` (previous)", "**`answered` (default)**", "answered vs queued"))
    L += ["", "### TLS vs plaintext (both `ack = \"answered\"`)", "",
          "The daemon's two connections (inputs and results) over TLS to the broker's TLS listener, "
          "everything else the same as the plaintext `answered` column above (the same turns).", ""]
    L += compare_rows(answered, tls, res, ("answered", "tls"), ("plaintext", "**TLS**", "TLS vs plaintext"))
    L += ["", "### Outbox: fill while the uplink is down, replay when it returns", ""]
    L += ["The daemon with `[uplink]` on a second Mosquitto (`persistence true`, so the results' subscriber's "
          "session, made before the outage, survives it) and `reconnect_min_ms = 50`, `reconnect_max_secs = 1` "
          "on the uplink, `[health] interval_secs = 1`, everything else default (outbox 256 MiB, `drop_oldest`). "
          "The uplink is stopped, the inputs are sent (QoS 1, open loop) and every result goes to the outbox; "
          "the commits are timed from the outbox files' growth (sampled every 10 ms; a broker acknowledges a "
          "publish on receipt, so the inputs' PUBACKs cannot time them). Then the uplink is started; the replay "
          "is timed at the subscriber, and fresh inputs are sent from the moment the uplink accepts connections. "
          "Fresh inputs are grouped by when they were due: before the daemon was back (their results went to "
          "the outbox too), during the replay, after it.", ""]
    L += outage_rows(fast, slow, meta)
    L += [""]
    L += targets(res, queued, answered, tls, fast, slow)
    return "\n".join(L).rstrip() + "\n"


def targets(res, queued, answered, tls, fast, slow):
    fq, fa = fixed(queued), fixed(answered)
    sq, sa, st = (median_rate(res, c) for c in ("queued", "answered", "tls"))
    L = ["### Targets of issue 12", "", "| target | result | figures |", "|---|---|---|"]
    p99q, p99a = fq.get("p99_ms"), fa.get("p99_ms")
    if p99q is not None and p99a is not None:
        ok = p99a <= p99q + P99_MARGIN_MS
        L.append(f"| QoS 1 HAR p99 @1,000/s, `answered` <= `queued` + {P99_MARGIN_MS} ms | "
                 f"**{'met' if ok else 'missed'}** | {num(p99a)} vs {num(p99q)} ms ({p99a - p99q:+.3f}) |")
    if sq and sa:
        ok = sa >= SUSTAINED_MIN_RATIO * sq
        L.append(f"| QoS 1 HAR sustained, `answered` >= 90% of `queued` | **{'met' if ok else 'missed'}** | "
                 f"{num(sa)} vs {num(sq)} msg/s ({sa / sq:.2f}x; turns {runs(res, 'answered')} vs "
                 f"{runs(res, 'queued')}) |")
    elif sq or sa:
        L.append(f"| QoS 1 HAR sustained, `answered` >= 90% of `queued` | **not measured** | "
                 f"answered {num(sa)}, queued {num(sq)} |")
    L += [""]
    # What it means, from the numbers.
    words = []
    if p99q is not None and p99a is not None and sq and sa:
        words.append(
            f"Acknowledging a QoS 1 input only once its result is confirmed costs "
            f"{p99a - p99q:+.3f} ms at p99 at 1,000 msg/s ({num(p99a)} against {num(p99q)} ms; target +{P99_MARGIN_MS}: "
            f"{'met' if p99a <= p99q + P99_MARGIN_MS else 'missed'}) and {100 * (sa / sq - 1):+.0f}% of the sustained "
            f"rate ({num(sa)} against {num(sq)} msg/s; target -10%: "
            f"{'met' if sa >= SUSTAINED_MIN_RATIO * sq else 'missed'}). The device's own PUBACKs do not change "
            "(a broker acknowledges a publish on receipt); what changes is how long the broker holds each input "
            "for the daemon: until its result is confirmed. This broker lets a client have any number of them "
            "unacknowledged (`max_inflight_messages 0`); see the notes for a stock Mosquitto's 20.")
    sa_tls = sa
    if sa_tls and st:
        words.append(f"TLS keeps {st / sa_tls:.2f}x of the plaintext sustained rate ({num(st)} against {num(sa_tls)} "
                     f"msg/s); p99 at 1,000 msg/s {num(fixed(tls).get('p99_ms'))} against {num(fa.get('p99_ms'))} ms, "
                     f"CPU per 1,000 messages {num(fixed(tls).get('cpu_s_per_1000'))} against "
                     f"{num(fa.get('cpu_s_per_1000'))} s.")
    if fast:
        words.append(
            f"While the uplink was down the outbox stored {num(g(fast, 'fill', 'commit_rate'))} results/s against "
            f"{num(g(fast, 'fill', 'rate'))} offered (all stored {num(g(fast, 'fill', 'stored_after_last_send_s'))} s "
            f"after the last send), and when it returned the daemon replayed them at "
            f"{num(g(fast, 'drain', 'replay_rate'))} results/s, the last one {num(g(fast, 'drain', 'last_after_up_s'))} s "
            f"after the uplink accepted connections; fresh results due during the replay had p99 "
            f"{num(g(fast, 'live', 'during_drain', 'p99_ms'))} ms "
            f"({num(g(fast, 'live', 'during_drain', 'received'))} of them), after it "
            f"{num(g(fast, 'live', 'after_drain', 'p99_ms'))} ms.")
    if slow:
        words.append(
            f"At {num(g(slow, 'fill', 'rate'))} results/s each result is synced alone: "
            f"{num(g(slow, 'fill', 'write_bytes_per_result'))} bytes written to storage per "
            f"{num(g(slow, 'fill', 'outbox_bytes_per_result'))}-byte record, against "
            f"{num(g(fast, 'fill', 'write_bytes_per_result')) if fast else '–'} when results arrive "
            f"{num(g(fast, 'fill', 'rate')) if fast else '–'}/s.")
    if words:
        L += ["**What it means.** " + " ".join(words), ""]
    return L


def write(out, text):
    if out == "-":
        sys.stdout.write(text)
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
    write(out, section(res))
    print(f"delivery_report.py: wrote the issue 12 section to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
