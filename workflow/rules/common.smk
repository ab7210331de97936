# Shared settings: values resolved once per run (backend, sizes, problems), path helpers for input functions.
from kernelcraft import layout
from kernelcraft.context import RESOLVED_KEY, resolve_or_exit

config[RESOLVED_KEY] = resolve_or_exit(config)

RUN = str(layout.run_dir("results", config["run"]))
PROBLEMS = list(config[RESOLVED_KEY]["problems"])
# Problems some configured model may write kernels for; the others get only their baseline.
SEARCHED = list(config[RESOLVED_KEY]["searched"])
ROUNDS = list(range(1, int(config["rounds"]) + 1))
BACKEND = config[RESOLVED_KEY]["backend"]
# Candidate processes on the CPU backend compute with every core; on cuda, the GPU does the work.
EVAL_THREADS = workflow.cores if BACKEND == "cpu" else 2


wildcard_constraints:
    problem="[A-Za-z0-9][A-Za-z0-9_.-]*",
    round="[0-9]+",


def stage(name):
    """Output path pattern of a per-(problem, round) stage."""
    return f"{RUN}/{{problem}}/round_{{round}}/{name}.json"


def previous(name, wildcards):
    r = int(wildcards.round)
    return [str(layout.stage_file(RUN, wildcards.problem, r - 1, name))] if r > 1 else []


def earlier_ideas(wildcards):
    return [str(layout.stage_file(RUN, wildcards.problem, r, "ideas")) for r in range(1, int(wildcards.round))]


def job_log(name):
    return f"{RUN}/logs/{{problem}}/round_{{round}}/{name}.log"
