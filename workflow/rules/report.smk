# The run's manifest, the candidates table and the self-contained HTML report.


# Written once every search stage is done, so it records when the run started (its first stage file) and finished.
rule manifest:
    input:
        baselines=expand(f"{RUN}/{{problem}}/baseline.json", problem=PROBLEMS),
        selections=expand(stage("select"), problem=SEARCHED, round=ROUNDS),
    output:
        f"{RUN}/manifest.json",
    log:
        f"{RUN}/logs/manifest.log",
    benchmark:
        f"{RUN}/benchmarks/manifest.tsv"
    params:
        workflow=workflow.basedir,
    message:
        "recording the run manifest"
    script:
        "../scripts/manifest.py"


rule report:
    input:
        manifest=f"{RUN}/manifest.json",
        baselines=expand(f"{RUN}/{{problem}}/baseline.json", problem=PROBLEMS),
        selections=expand(stage("select"), problem=SEARCHED, round=ROUNDS),
    output:
        html=f"{RUN}/report.html",
        csv=f"{RUN}/candidates.csv",
        problems_csv=f"{RUN}/problems.csv",
        problems_parquet=f"{RUN}/problems.parquet",
    log:
        f"{RUN}/logs/report.log",
    benchmark:
        f"{RUN}/benchmarks/report.tsv"
    params:
        templates=f"{workflow.basedir}/templates",
    message:
        "rendering the report"
    script:
        "../scripts/report.py"
