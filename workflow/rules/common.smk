# Shared settings: one-line config check, values resolved once per run, path helpers for input functions.
import sys

from kernelcraft.config import ConfigError, check_config
from kernelcraft.context import RESOLVED_KEY, resolve
from kernelcraft import layout

try:
    check_config({k: v for k, v in config.items() if k != RESOLVED_KEY})
    config[RESOLVED_KEY] = resolve({k: v for k, v in config.items() if k != RESOLVED_KEY})
except (ConfigError, ValueError) as err:
    sys.exit(f"kernelcraft: {err}")

RESULTS = "results"
RUN = str(layout.run_dir(RESULTS, config["run"]))
PROBLEMS = list(config[RESOLVED_KEY]["problems"])
ROUNDS = list(range(1, int(config["rounds"]) + 1))
BACKEND = config[RESOLVED_KEY]["backend"]
# Candidate processes on the CPU backend compute with every core; on cuda, the GPU does the work.
EVAL_THREADS = workflow.cores if BACKEND == "cpu" else 2


wildcard_constraints:
    problem="[A-Za-z0-9][A-Za-z0-9_.-]*",
    round="[0-9]+",


def stage(name):
    """Output path pattern of a per-(problem, round) stage."""
    return RUN + "/{problem}/round_{round}/" + name + ".json"


def previous(name, wildcards):
    r = int(wildcards.round)
    return [str(layout.stage_file(RUN, wildcards.problem, r - 1, name))] if r > 1 else []


def earlier_ideas(wildcards):
    return [str(layout.stage_file(RUN, wildcards.problem, r, "ideas")) for r in range(1, int(wildcards.round))]


def job_log(name):
    return RUN + "/logs/{problem}/round_{round}/" + name + ".log"
