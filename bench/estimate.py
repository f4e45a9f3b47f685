#!/usr/bin/env python3
"""How long scripts/bench.sh will take, printed at its start.

    estimate.py --workloads bench/workloads.json --targets echo,edge-infer,baseline \\
        --settings defaults,fastest --defaults-workloads W1,W2 --fastest-workloads W1 \\
        --fixed 10 --trial 5 --confirm 30 --confirm-fastest 15 --cold 5 --repeat 2 --mixed 1
    estimate.py --from RESULTS_DIR --fixed 10 --trial 5 --confirm 30 --confirm-fastest 15

The first form counts the runs a drive makes: every fixed rate (the lean
ones at fastest), the search's trials and the confirmation, each for its
duration plus what a run costs around it (connecting, waiting for the
target to go idle, the grace period of a failed trial). The trial counts
and costs are from a quick run of every workload on the 2-core machine the
benchmark was written on (bench16, see bench/notes.md); a machine that
sustains other rates searches differently. The second form replays the
runs a finished (e.g. --quick) run made, with other durations: the
estimate of a full run from a quick one. Standard library only.
"""

import argparse
import glob
import json
import os

# Seconds a run costs beyond its own duration, per target (connect, lead,
# wait for idle before it, answers after it): measured 0.5-1.5 s in the
# quick run of bench16 (a failed search trial gives up early).
OVERHEAD_S = {"echo": 0.8, "edge-infer": 0.7, "baseline": 0.9}
# Trials a search makes: doubling from the fixed rates then bisecting, or
# starting from a hint (an earlier run's rate) in 25% steps; the hint from
# the defaults run is often half the fastest rate, so a hinted search saves
# little there (measured: 5.1 and 6.1 per workload); from the same
# target's previous repetition it starts near the answer.
TRIALS = {"plain": 5.1, "hinted": 5.5, "repeated": 4.0}
# Confirmation runs per workload (a failed one steps down 10%; measured
# 1.5 at defaults and 2.4 at fastest on a machine with a load average of 5).
CONFIRMS = 1.8
# Per drive: cold starts and stopping the target.
START_S = {"echo": 0.5, "edge-infer": 0.8, "baseline": 2.0}
# Before the drives: the runtime floor and the cold starts of every shipped
# model, full and quick.
PROLOGUE_S = {"full": 40, "quick": 15}


def plan(a):
    with open(a.workloads) as f:
        specs = {w["name"]: w for w in json.load(f)}
    targets = a.targets.split(",")
    settings = a.settings.split(",")
    lists = {"defaults": [w for w in a.defaults_workloads.split(",") if w],
             "fastest": [w for w in a.fastest_workloads.split(",") if w]}
    fastest_of = {"echo": [w for w in a.echo_fastest_workloads.split(",") if w] or lists["fastest"],
                  "baseline": [w for w in a.baseline_fastest_workloads.split(",") if w] or lists["fastest"]}
    total = PROLOGUE_S["quick" if a.fixed < 10 else "full"]
    for rep in range(1, a.repeat + 1):
        for s in settings:
            for t in targets:
                ws = fastest_of.get(t, lists["fastest"]) if s == "fastest" else lists.get(s, [])
                if not ws:
                    continue
                ov = OVERHEAD_S.get(t, 2.0)
                total += (a.cold if s == "defaults" else 1) * START_S.get(t, 1.0)
                hint = "repeated" if rep > 1 else ("hinted" if s == "fastest" else "plain")
                confirm = a.confirm if s == "defaults" else a.confirm_fastest
                for w in ws:
                    spec = specs.get(w, {})
                    rates = spec.get("lean_rates", spec.get("rates", [])) if s == "fastest" else spec.get("rates", [])
                    total += len(rates) * (a.fixed + ov)
                    total += TRIALS[hint] * (a.trial + ov)
                    total += CONFIRMS * (confirm + ov)
                if s == "defaults" and a.mixed and t != "echo":
                    total += a.fixed + 2 * ov
                if s == "defaults" and a.mixed and t == "edge-infer":
                    # The mixed phase again with MobileNetV2 in the
                    # background: a start, both models alone, both at once.
                    total += START_S.get(t, 1.0) + 3 * (a.fixed + ov)
    return total


def replay(a):
    """Seconds a run with these durations would take, from the runs a
    finished one made (each run's wall time minus its own duration is its
    overhead, kept)."""
    total = 0.0
    per = {}
    for path in sorted(glob.glob(os.path.join(a.source, "*.json"))):
        base = os.path.basename(path)
        if base.startswith(("floor_", "coldstart", "meta")):
            continue
        if ".rep" not in base and glob.glob(path[:-5] + ".rep*.json"):
            continue  # the median of the reps, not a run
        with open(path) as f:
            doc = json.load(f)
        fastest = doc.get("target", "").endswith("-fastest")
        confirm = a.confirm_fastest if fastest else a.confirm
        secs = 0.0
        for w in doc.get("workloads", []):
            runs = [r for r in w.get("fixed", []) if "skipped" not in r]
            runs += w.get("search_trials", [])
            if w.get("sustained"):
                runs.append(w["sustained"])
            for r in runs:
                wall = r.get("wall_s") or (r.get("seconds", 0) + 2)
                over = max(0.0, wall - r.get("seconds", 0))
                secs += {"fixed": a.fixed, "trial": a.trial, "confirm": confirm}.get(r.get("part"), a.trial) + over
        mixed = doc.get("mixed") or {}
        if mixed.get("seconds") is not None:
            secs += a.fixed + 5
        cold = doc.get("cold_start_ms", [])
        secs += len(cold) * 0.6
        per[base] = secs
        total += secs
    return total + PROLOGUE_S["full" if a.fixed >= 10 else "quick"], per


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="source")
    ap.add_argument("--workloads")
    ap.add_argument("--targets", default="echo,edge-infer,baseline")
    ap.add_argument("--settings", default="defaults,fastest")
    ap.add_argument("--defaults-workloads", default="")
    ap.add_argument("--fastest-workloads", default="")
    ap.add_argument("--echo-fastest-workloads", default="")
    ap.add_argument("--baseline-fastest-workloads", default="")
    ap.add_argument("--fixed", type=float, default=10)
    ap.add_argument("--trial", type=float, default=5)
    ap.add_argument("--confirm", type=float, default=30)
    ap.add_argument("--confirm-fastest", type=float, default=10)
    ap.add_argument("--cold", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--mixed", type=int, default=1)
    a = ap.parse_args()
    if a.source:
        total, per = replay(a)
        for name, s in per.items():
            print(f"  {name}: {s / 60:.1f} min")
        print(f"a run with these durations: about {total / 60:.0f} min")
        return
    total = plan(a)
    print(f"expected duration: about {total / 60:.0f} min ({a.repeat} repetition(s); "
          "bench/estimate.py, from a quick run on a 2-core machine; the rates the targets sustain change it)")


if __name__ == "__main__":
    main()
