"""The workflow through Snakemake's Slurm executor on a real one-node Slurm cluster (localhost, state in a temporary
directory: tests/slurm/start_cluster.sh), the CPU end-to-end run with the Slurm profile.

Needs root and Debian's slurm-wlm and munge (`.ci/run` installs them) and the slurm plugin (the test extra); the test
skips, saying which, only where the cluster cannot start at all. Known pitfalls it works around: no accounting
database (the plugin polls squeue, not sacct), the plugin clearing SLURM_* inside jobs (slurm.conf sits at its
default path), no account on this cluster.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
SCRIPTS = Path(__file__).resolve().parent / "slurm"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")


def _why_not() -> str | None:
    missing = [d for d in DAEMONS if shutil.which(d) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the one-node cluster writes /etc/slurm/slurm.conf and runs its daemons as root"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _why_not()
    if reason:
        pytest.skip(f"Slurm cannot start here: {reason}")
    state = tmp_path_factory.mktemp("slurm")
    started = subprocess.run(["bash", str(SCRIPTS / "start_cluster.sh"), str(state)], capture_output=True,
                             text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), str(state)], capture_output=True, timeout=60)
        pytest.skip(f"Slurm cannot start here: {(started.stderr or started.stdout).strip().splitlines()[-1:]}")
    yield state
    subprocess.run(["bash", str(SCRIPTS / "stop_cluster.sh"), str(state)], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm_e2e")
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.update({"run": "slurm", "rounds": 1, "ideas_per_round": 2, "implementations_per_idea": 2,
                   "backend": "cpu"})
    config["problems"].update({"builtin": ["relu_4096x32768"], "size": "small"})
    config["benchmark"].update({"iters": 5, "warmup": 1, "min_time_ms": 5})
    config["verify"]["trials"] = 2
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    small = "runtime=10 mem_mb=1000"
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile", "config.yaml",
           "--workflow-profile", str(REPO / "workflow" / "profiles" / "slurm"), "--jobs", "4",
           # This cluster: its one partition, no account, no accounting database, a small node.
           "--default-resources", "slurm_partition=debug", *small.split(),
           "--set-resources", *(f"{rule}:{r}" for rule in ("compile", "baseline", "evaluate") for r in small.split()),
           "--slurm-no-account", "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-keep-successful-logs"]
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1200)
    (work / "snakemake.stderr").write_text(done.stderr)
    return {"work": work, "done": done, "cluster": cluster}


@pytest.mark.slow
def test_the_workflow_runs_as_slurm_jobs_and_writes_its_report(slurm_run):
    done, work = slurm_run["done"], slurm_run["work"]
    assert done.returncode == 0, done.stderr[-4000:]
    run = work / "results" / "slurm"
    assert (run / "report.html").is_file() and (run / "manifest.json").is_file()
    # Snakemake submitted every job to Slurm and names each one's job id.
    jobs = re.findall(r"submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/rule_(\w+)/", done.stderr)
    submitted = [job for job, _ in jobs]
    assert len(set(submitted)) == len(submitted), done.stderr[-3000:]
    assert sorted(rule for _, rule in jobs) == sorted(
        ["baseline", "ideas", "implement", "compile", "evaluate", "select", "manifest", "report"])
    # Slurm's own records: every one of those jobs completed on this cluster's node, under its rule's name.
    completions = (slurm_run["cluster"] / "log" / "jobcomp.log").read_text()
    for job in submitted:
        assert re.search(rf"JobId={job} .*JobState=COMPLETED", completions), job
    history = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True)
    states = {line.split("|")[0]: line.split("|")[1:] for line in history.stdout.split()}
    assert all(states[job][0] == "COMPLETED" and states[job][1].startswith("rule_") for job in submitted)
    # Each job's Slurm log is kept, under the rule it ran.
    logs = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} >= set(submitted)


@pytest.mark.slow
def test_each_job_asks_slurm_for_its_threads_and_the_cpu_backend_asks_for_no_gpu(slurm_run):
    assert slurm_run["done"].returncode == 0
    history = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i|%k"], capture_output=True, text=True)
    rule_of = dict(line.split("|") for line in history.stdout.split())
    # The plugin's job comment: rule_<name>, then the wildcards.
    evaluate = [job for job, rule in rule_of.items() if re.match(r"rule_evaluate(_|$)", rule)]
    compile_ = [job for job, rule in rule_of.items() if re.match(r"rule_compile(_|$)", rule)]
    assert evaluate and compile_
    completions = (slurm_run["cluster"] / "log" / "jobcomp.log").read_text().splitlines()
    record = {re.search(r"JobId=(\d+)", ln).group(1): ln for ln in completions}
    cores = os.cpu_count() or 1  # the rules ask for every core of a node like this one, no more
    for job in evaluate + compile_:
        assert f"ProcCnt={cores}" in record[job], record[job]
        assert "gpu" not in record[job].split("Tres=")[1], record[job]
