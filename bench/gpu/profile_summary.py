#!/usr/bin/env python3
"""Where a run's GPU time went, from cubecl's profiling log.

With CUBECL_DEBUG_OPTION=profile and CUBECL_DEBUG_LOG=FILE, cubecl writes one line per kernel
launch, `| 418.454µs  | ElemwiseFuse | WgpuRuntime`: its time, then the kernel's name and type
parameters. This prints one JSON line per kernel name (launches, total and mean time, share of
the whole), largest first, then one with the totals, so that a check script can record the
breakdown beside its timings.

usage: profile_summary.py LOG [--top N]
"""

import argparse
import json
import re
import sys
from collections import defaultdict

LAUNCH = re.compile(r"^\| ([0-9.]+)(ns|µs|us|ms|s)\s*\| ([^|]+?)\s*(\||$)")
TO_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}


def summarize(lines):
    """(name -> [launches, total ms]) over the launch lines of a cubecl profiling log."""
    kernels = defaultdict(lambda: [0, 0.0])
    for line in lines:
        match = LAUNCH.match(line)
        if match:
            value, unit, name = match.group(1), match.group(2), match.group(3)
            entry = kernels[name]
            entry[0] += 1
            entry[1] += float(value) * TO_MS[unit]
    return kernels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log")
    parser.add_argument("--top", type=int, default=15, help="kernel names listed (the rest summed)")
    args = parser.parse_args()
    with open(args.log, encoding="utf-8", errors="replace") as log:
        kernels = summarize(log)
    if not kernels:
        print(f"{args.log}: no kernel launches in this log (was CUBECL_DEBUG_OPTION=profile set?)",
              file=sys.stderr)
        return 1
    total_ms = sum(ms for _, ms in kernels.values())
    launches = sum(count for count, _ in kernels.values())
    ranked = sorted(kernels.items(), key=lambda item: -item[1][1])
    for name, (count, ms) in ranked[: args.top]:
        print(json.dumps({"kernel": name, "launches": count, "total_ms": round(ms, 3),
                          "mean_us": round(1e3 * ms / count, 2), "share": round(ms / total_ms, 4)}))
    rest = ranked[args.top:]
    if rest:
        rest_ms = sum(ms for _, (_, ms) in rest)
        print(json.dumps({"kernel": f"({len(rest)} others)", "launches": sum(c for _, (c, _) in rest),
                          "total_ms": round(rest_ms, 3), "share": round(rest_ms / total_ms, 4)}))
    print(json.dumps({"profile": args.log, "launches": launches, "total_ms": round(total_ms, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
