"""Resume after a hard kill: `kill -9` of the workflow mid-round, `--unlock`, then the same command with
`--rerun-incomplete` completes the run, and no stage file written before the kill changes.

What users do when a node dies or a job is killed by the scheduler. The workflow (CPU backend, small sizes, the
offline proposer) is started in its own process group; once round 2 of some problem has begun (its ideas file
exists) and some round-1 files are finished, Snakemake and every job it started are killed with SIGKILL. The bench
records every file under results/<run>/ with its hash and mtime at that moment, unlocks, resumes, and checks:
the resumed run finished (report, manifest), and every stage file that existed before the kill (a job's finished
output: ideas, implement, compile, verify, benchmark, select JSON) is byte-identical and untouched (same mtime).
Outputs of the jobs that were running at the kill (Snakemake's .snakemake/incomplete markers) are Snakemake's to
redo (--rerun-incomplete) and are listed apart.

Usage: python bench/resume.py [--problems softmax_4096x65536,relu_4096x32768] [--rounds 3]
Prints one JSON object: time to the kill, resume time, files before the kill, how many were kept unchanged.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
STAGES = ("ideas.json", "implement.json", "compile.json", "verify.json", "benchmark.json", "select.json")


def snapshot(run: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file() and "transcripts/.slots" not in str(p)}


def incomplete_outputs(work: Path) -> set[str]:
    """Outputs of jobs Snakemake had started but not finished: its markers under .snakemake/incomplete/ are the
    outputs' paths, base64-encoded. --rerun-incomplete reruns those jobs, so their files may be rewritten."""
    found = set()
    for marker in (work / ".snakemake" / "incomplete").glob("*"):
        try:
            found.add(base64.urlsafe_b64decode(marker.name.encode() + b"==").decode())
        except (binascii.Error, UnicodeDecodeError):
            continue
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="softmax_4096x65536,relu_4096x32768")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = yaml.safe_load((REPO / "config.yaml").read_text())
        config.update({"run": "resume", "rounds": args.rounds, "backend": "cpu"})
        config["problems"].update({"builtin": args.problems.split(","), "size": "small"})
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [snakemake, "-s", str(SNAKEFILE), "--configfile", "config.yaml", "--cores", str(args.cores),
               "--resources", "gpu=1"]
        run = work / "results" / "resume"
        t0 = time.perf_counter()
        with open(work / "first.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=log, start_new_session=True)
        while not any(run.glob("*/round_2/ideas.json")):
            if proc.poll() is not None:
                sys.exit(f"the workflow ended before round 2 began; see {work / 'first.log'}")
            time.sleep(0.05)
        time.sleep(1.0)  # let the next jobs start, so the kill interrupts running work
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = time.perf_counter() - t0
        before = snapshot(run)
        prefix = str(run.relative_to(work)) + "/"
        running = {p[len(prefix):] for p in incomplete_outputs(work) if p.startswith(prefix)}
        stage_files = {rel for rel in before if rel.endswith(STAGES) and rel not in running}
        unlock = subprocess.run([*cmd, "--unlock"], cwd=work, capture_output=True, text=True)
        t1 = time.perf_counter()
        resumed = subprocess.run([*cmd, "--rerun-incomplete"], cwd=work, capture_output=True, text=True)
        resume_s = time.perf_counter() - t1
        after = snapshot(run)
        changed = sorted(rel for rel in stage_files if after.get(rel) != before[rel])
        print(json.dumps({
            "benchmark": "resume_after_kill_9", "problems": args.problems.split(","), "rounds": args.rounds,
            "killed_after_s": round(killed_at, 1), "unlock_rc": unlock.returncode, "resume_rc": resumed.returncode,
            "resume_s": round(resume_s, 1), "finished": (run / "report.html").is_file()
            and (run / "manifest.json").is_file(),
            "files_before_kill": len(before), "stage_files_before_kill": len(stage_files),
            "outputs_of_killed_jobs": sorted(running),
            "stage_files_unchanged": len(stage_files) - len(changed), "stage_files_changed": changed,
            "files_after": len(after),
        }))
        if resumed.returncode != 0 or changed:
            sys.exit(resumed.stderr[-3000:] if resumed.returncode else "stage files changed on resume")


if __name__ == "__main__":
    main()
