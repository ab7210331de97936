# The reference timed eager and under torch.compile, once per problem.


rule baseline:
    output:
        RUN + "/{problem}/baseline.json",
    log:
        RUN + "/logs/{problem}/baseline.log",
    params:
        results=RESULTS,
    threads: EVAL_THREADS
    resources:
        gpu=1,
    message:
        "{wildcards.problem}: timing the reference (eager, torch.compile)"
    script:
        "../../scripts/baseline.py"
