"""`just bench`: run every benchmark, each in its own process, then print all figures."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import RESULTS, print_table

BENCHMARKS = (
    "bench.bench_vm",
    "bench.bench_api",
    "bench.bench_tmux",
    "bench.bench_templates",
    "bench.bench_web",
    "bench.bench_load",
    "bench.bench_replicas",
    "bench.bench_chains",
    "bench.bench_prims",
    "bench.bench_density",
)


def main() -> int:
    RESULTS.unlink(missing_ok=True)
    failed = [
        name for name in BENCHMARKS if subprocess.run([sys.executable, "-m", name]).returncode != 0
    ]
    print("\nall figures (bench/results/latest.json):")
    print_table(json.loads(RESULTS.read_text()) if RESULTS.exists() else {})
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
