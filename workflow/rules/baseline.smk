# The reference timed eager and under torch.compile, once per problem.


rule baseline:
    output:
        f"{RUN}/{{problem}}/baseline.json",
    log:
        f"{RUN}/logs/{{problem}}/baseline.log",
    benchmark:
        f"{RUN}/benchmarks/{{problem}}/baseline.tsv"
    threads: EVAL_THREADS
    resources:
        gpu=GPU_PER_JOB,
    message:
        "{wildcards.problem}: timing the reference (eager, torch.compile)"
    script:
        "../scripts/baseline.py"
