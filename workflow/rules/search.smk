# The idea-branching steps that ask models: ideas (conditioned on the seeds and on every idea already tried) and
# implement (several implementations per idea). Round r+1's ideas depend on round r's selection.


rule ideas:
    input:
        baseline=f"{RUN}/{{problem}}/baseline.json",
        seeds=lambda wc: previous("select", wc),
        tried=earlier_ideas,
    output:
        stage("ideas"),
    log:
        job_log("ideas"),
    benchmark:
        job_benchmark("ideas")
    params:
        templates=f"{workflow.basedir}/templates",
    message:
        "{wildcards.problem} round {wildcards.round}: asking for ideas"
    script:
        "../scripts/ideas.py"


rule implement:
    input:
        ideas=stage("ideas"),
        seeds=lambda wc: previous("select", wc),
    output:
        stage("implement"),
    log:
        job_log("implement"),
    benchmark:
        job_benchmark("implement")
    params:
        templates=f"{workflow.basedir}/templates",
    message:
        "{wildcards.problem} round {wildcards.round}: implementing ideas"
    script:
        "../scripts/implement.py"
