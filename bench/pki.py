"""Benchmark: time to generate a whole PKI in-process (goal: under 0.2 s with ECDSA).

Usage: python bench/pki.py [--runs N]
Prints the median, best and worst of N runs for each key algorithm.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kubeplat import config, pki  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = config.load_file(REPO / "environments" / "example.tfvars")
    with tempfile.TemporaryDirectory():
        print(f"{'algorithm':<12} {'median_s':>9} {'best_s':>9} {'worst_s':>9}  runs")
        for algorithm in ("ecdsa-p256", "rsa-2048"):
            variant = replace(env, key_algorithm=algorithm)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                pki.ensure(variant, {})
                times.append(time.perf_counter() - start)
            print(
                f"{algorithm:<12} {statistics.median(times):>9.4f} {min(times):>9.4f} "
                f"{max(times):>9.4f}  {args.runs}"
            )


if __name__ == "__main__":
    main()
