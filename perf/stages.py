#!/usr/bin/env python3
"""Per-stage latency from rjabberd's Prometheus exposition: for each stage (parse, route, mesh, deliver,
total) and store queries, the sample count, the mean, the bucket holding the 50th, 99th and 99.9th
percentile, and how many samples took longer than each of 10 ms, 100 ms and 250 ms — per shard and for
all shards. Percentiles are bucket upper bounds (the exposition's resolution); `rjabberd ctl latency`
gives them to 1 %.

    perf/stages.py FILE            # a saved scrape (perf/compare.sh leaves $OUT/rjabberd.metrics)
    perf/stages.py http://127.0.0.1:9560/metrics
"""
import re
import sys
import urllib.request
from collections import defaultdict

LINE = re.compile(r'^rjabberd_(stanza_stage_seconds|store_query_seconds|store_exec_seconds)_(bucket|sum|count)\{([^}]*)\} (\S+)$')


def load(source):
    if source.startswith("http://"):
        return urllib.request.urlopen(source, timeout=10).read().decode()
    return open(source).read()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    # (stage, shard) -> {"buckets": {le: count}, "sum": s, "count": n}
    series = defaultdict(lambda: {"buckets": {}, "sum": 0.0, "count": 0})
    for line in load(sys.argv[1]).splitlines():
        m = LINE.match(line)
        if not m:
            continue
        family, part, labels, value = m.groups()
        lab = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        stage = lab.get("stage", "store" if family == "store_query_seconds" else "store_exec")
        for key in (lab["shard"], "all"):
            s = series[(stage, key)]
            if part == "bucket":
                le = float("inf") if lab["le"] == "+Inf" else float(lab["le"])
                s["buckets"][le] = s["buckets"].get(le, 0) + float(value)
            elif part == "sum":
                s["sum"] += float(value)
            else:
                s["count"] += float(value)

    def quantile(buckets, count, q):
        for le in sorted(buckets):
            if buckets[le] >= q * count:
                return le
        return float("inf")

    def over(buckets, count, limit):
        below = max((c for le, c in buckets.items() if le <= limit), default=0)
        return int(count - below)

    def fmt(seconds):
        if seconds == float("inf"):
            return "+Inf"
        return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"

    order = ["parse", "route", "mesh", "deliver", "total", "store", "store_exec"]
    print(f"{'stage':8} {'shard':>5} {'count':>9} {'mean':>11} {'p50 ≤':>11} {'p99 ≤':>11} {'p99.9 ≤':>11}"
          f" {'>10ms':>6} {'>100ms':>7} {'>250ms':>7}")
    for stage in order:
        keys = sorted((k for (st, k) in series if st == stage), key=lambda k: (k == "all", k))
        for shard in keys:
            s = series[(stage, shard)]
            n = s["count"]
            if not n:
                continue
            b = s["buckets"]
            print(f"{stage:8} {shard:>5} {int(n):>9} {fmt(s['sum'] / n):>11} {fmt(quantile(b, n, 0.5)):>11}"
                  f" {fmt(quantile(b, n, 0.99)):>11} {fmt(quantile(b, n, 0.999)):>11}"
                  f" {over(b, n, 0.01):>6} {over(b, n, 0.1):>7} {over(b, n, 0.25):>7}")


if __name__ == "__main__":
    main()
