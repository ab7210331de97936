"""Run the workflow on a KernelBench level directory the user has, and print the per-problem table and KernelBench's
suite metrics.

The project ships no KernelBench code: PATH is a checkout's level folder (e.g. KernelBench/level1). The run is an
ordinary workflow run (results/<run>/ in the current directory, resumable with the same command), with the
problems, rounds and any --config overrides given here; the table printed is the run's problems.parquet, the one
the report is built from.

Usage: python bench/kernelbench.py PATH/TO/KernelBench/level1 [--problems REGEX] [--rounds N] [--run NAME]
                                   [--cores N] [--gpus N] [--size auto|full|small] [--no-torch-compile]
                                   [--config KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a KernelBench level directory (e.g. KernelBench/level1)")
    parser.add_argument("--problems", default=None, help="only problems whose id matches this regular expression")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--run", default="kernelbench")
    parser.add_argument("--cores", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--size", choices=("auto", "full", "small"), default="auto")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="time the references in eager mode only (a torch.compile takes tens of seconds each)")
    parser.add_argument("--config", nargs="*", default=[], help="further config overrides, KEY=VALUE")
    args = parser.parse_args()

    level = Path(args.path).expanduser().resolve()
    if not level.is_dir():
        print(f"kernelbench: {level} is not a directory; pass a KernelBench level folder, e.g. KernelBench/level1",
              file=sys.stderr)
        return 2
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or shutil.which("snakemake")
    if snakemake is None:
        print("kernelbench: snakemake is not installed; pip install the project first", file=sys.stderr)
        return 2
    import yaml

    config = Path(f"kernelbench-{args.run}.yaml")  # kept beside results/: the exact experiment, for a rerun
    experiment = {"run": args.run, "rounds": args.rounds, "problems": {
        "builtin": [], "dirs": [str(level)], "include": args.problems, "exclude": None, "size": args.size}}
    if args.no_torch_compile:
        experiment["benchmark"] = {"torch_compile": False}
    config.write_text(yaml.safe_dump(experiment))
    cmd = [snakemake, "-s", str(SNAKEFILE), "--configfile", str(config), "--cores", str(args.cores),
           "--resources", f"gpu={args.gpus}", "--rerun-incomplete"]
    if args.config:
        cmd += ["--config", *args.config]
    returncode = _wait(subprocess.Popen(cmd))
    table_path = Path("results") / args.run / "problems.parquet"
    if returncode != 0 or not table_path.is_file():
        print(f"kernelbench: the workflow did not finish (exit {returncode}); rerun the same command to resume "
              f"(after a kill, first: snakemake -s {SNAKEFILE} --configfile {config} --unlock)", file=sys.stderr)
        return returncode or 1

    import pandas as pd

    from kernelcraft.report.suite import metrics

    table = pd.read_parquet(table_path)
    shown = table[["problem", "family", "eager_ms", "compile_ms", "best_ms", "speedup_eager", "speedup_compile",
                   "pct_of_floor", "cause"]]
    with pd.option_context("display.width", 250, "display.max_rows", None, "display.max_colwidth", 70,
                           "display.float_format", "{:.4g}".format):
        print(shown.to_string(index=False))
    m = metrics(table)
    print(f"\n{m['problems']} problems, {m['searched']} searched, {m['correct']} with a correct kernel")
    for against in ("eager", "compile"):
        shares = "  ".join(f"fast_{p:g} {'-' if v is None else f'{100 * v:.0f}%'}"
                           for p, v in m["fast_p"][against].items())
        g = m["geomean"][against]
        print(f"vs {against:7s}  {shares}  geomean {'-' if g is None else f'{g:.2f}x'}")
    print(f"\ntables: {table_path} and {table_path.with_suffix('.csv')}; report: {table_path.parent / 'report.html'}")
    return 0


def _wait(proc: subprocess.Popen) -> int:
    """Snakemake's exit status. An interrupt (Ctrl-C, or timeout -s INT) reaches snakemake too, in the same process
    group, and it then stops its jobs and releases its lock: this waits for that rather than kill it mid-way."""
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


if __name__ == "__main__":
    sys.exit(main())
