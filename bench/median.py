#!/usr/bin/env python3
"""Merges repeated runs of one target into one result document.

    median.py RESULTS_DIR TARGET N

Reads TARGET.rep1.json .. TARGET.repN.json (written by scripts/bench.sh
--repeat N) and writes TARGET.json in the same shape, every number the
median over the runs at the same place (lists are matched by position: the
fixed rates are the same in every run). Figures a run lacks (a rate it
skipped) are left out, and a fixed rate only some runs ran has the
figures of those runs (`runs` says how many). Peak RSS figures (keys ending in `peak_rss_kb`)
are the highest over the runs, not the median: a memory bound holds only
if it holds in every run. Each workload also gets `sustained_runs`: the
rate every run sustained, so the spread is visible in the report; the
mixed phase's workloads get `rate_runs` for the same reason.
Standard library only.
"""

import json
import statistics
import sys


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def merge(values, key=""):
    first = values[0]
    if key.endswith("peak_rss_kb"):
        numbers = [v for v in values if is_number(v)]
        return max(numbers) if numbers else first
    if all(is_number(v) for v in values):
        m = statistics.median(values)
        return int(m) if all(isinstance(v, int) for v in values) and float(m).is_integer() else m
    if all(isinstance(v, dict) for v in values):
        ran = [v for v in values if "skipped" not in v]
        if ran and len(ran) < len(values):
            # A fixed rate some runs skipped (a lower one was overloaded):
            # the figures of the runs that ran it.
            out = merge(ran, key)
            out["runs"] = len(ran)
            return out
        keys = [k for k in first if all(k in v for v in values)]
        return {k: merge([v[k] for v in values], k) for k in keys}
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [merge(list(items), key) for items in zip(*values)]
    return first


def mixed_rate(doc, i):
    """The rate of the i-th workload of a run's mixed phase."""
    parts = (doc.get("mixed") or {}).get("workloads") or []
    return parts[i].get("rate") if i < len(parts) else None


def main():
    res, target, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    docs = []
    for i in range(1, n + 1):
        try:
            with open(f"{res}/{target}.rep{i}.json") as f:
                docs.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"median.py: run {i} of {target} is missing or unreadable ({e}); left out", file=sys.stderr)
    if not docs:
        return
    out = merge(docs)
    out["runs"] = len(docs)
    mixed = out.get("mixed")
    if isinstance(mixed, dict):
        for i, m in enumerate(mixed.get("workloads", [])):
            m["rate_runs"] = [mixed_rate(d, i) for d in docs]
    for w in out.get("workloads", []):
        w["sustained_runs"] = [
            (next((x for x in d.get("workloads", []) if x["name"] == w["name"]), {}).get("sustained") or {}).get("rate")
            for d in docs
        ]
    with open(f"{res}/{target}.json", "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
