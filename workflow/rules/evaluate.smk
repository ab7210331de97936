# compile (CPU, parallel builds) -> evaluate (GPU: verify, then benchmark the correct ones) -> select, per problem
# and round. One job verifies and times, with one process per candidate for both: two GPU jobs paid every
# candidate's process start, load and exit twice while the GPU sat idle (harness/evaluate_round.py).
# A candidate that fails to build, is wrong, crashes or hangs is a recorded result, never a failed job.
# compile sends a model's candidates that fail to build back to it with the errors (llm.repair_attempts), so it
# takes the prompt templates, like ideas and implement.


rule compile:
    input:
        implement=stage("implement"),
    output:
        stage("compile"),
    log:
        job_log("compile"),
    benchmark:
        job_benchmark("compile")
    threads: BUILD_THREADS
    params:
        templates=f"{workflow.basedir}/templates",
    message:
        "{wildcards.problem} round {wildcards.round}: building candidates"
    script:
        "../scripts/compile.py"


rule evaluate:
    input:
        implement=stage("implement"),
        compile=stage("compile"),
    output:
        verify=stage("verify"),
        benchmark=stage("benchmark"),
    log:
        job_log("evaluate"),
    benchmark:
        job_benchmark("evaluate")
    threads: EVAL_THREADS
    resources:
        gpu=GPU_PER_JOB,
    message:
        "{wildcards.problem} round {wildcards.round}: verifying candidates against the reference, timing the correct ones"
    script:
        "../scripts/evaluate.py"


rule select:
    input:
        implement=stage("implement"),
        verify=stage("verify"),
        benchmark=stage("benchmark"),
        seeds=lambda wc: previous("select", wc),
    output:
        stage("select"),
    log:
        job_log("select"),
    benchmark:
        job_benchmark("select")
    message:
        "{wildcards.problem} round {wildcards.round}: selecting seeds for the next round"
    script:
        "../scripts/select.py"
