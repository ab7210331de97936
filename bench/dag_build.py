"""Dry-run DAG build time for the full default search shape (10 problems x 5 rounds x 8 ideas x 4 implementations).

Target: under 10 s on a 2-core machine. Usage: python bench/dag_build.py [--repeat 3]
Prints one JSON object: the median, min and max wall seconds of `snakemake -n` and the number of jobs planned.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "-n", "-s", str(REPO / "workflow" / "Snakefile"), "--cores", "8", "--resources", "gpu=1",
           "--config", "run=bench-dag", "rounds=5", "ideas_per_round=8", "implementations_per_idea=4"]
    times, jobs = [], None
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - t0)
            match = re.search(r"^total\s+(\d+)", out.stdout, re.M)
            jobs = int(match.group(1)) if match else None
    print(json.dumps({"benchmark": "dag_build_dry_run", "problems": 10, "rounds": 5, "ideas": 8,
                      "implementations": 4, "jobs": jobs, "median_s": round(statistics.median(times), 3),
                      "min_s": round(min(times), 3), "max_s": round(max(times), 3), "target_s": 10}))


if __name__ == "__main__":
    main()
