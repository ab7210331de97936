# The run's manifest, the candidates table and the self-contained HTML report.


rule manifest:
    output:
        RUN + "/manifest.json",
    log:
        RUN + "/logs/manifest.log",
    params:
        results=RESULTS,
    message:
        "recording the run manifest"
    script:
        "../../scripts/manifest.py"


rule report:
    input:
        manifest=RUN + "/manifest.json",
        baselines=expand(RUN + "/{problem}/baseline.json", problem=PROBLEMS),
        selections=expand(stage("select"), problem=PROBLEMS, round=ROUNDS),
    output:
        html=RUN + "/report.html",
        csv=RUN + "/candidates.csv",
    log:
        RUN + "/logs/report.log",
    params:
        results=RESULTS,
        templates=workflow.basedir + "/workflow/templates",
    message:
        "rendering the report"
    script:
        "../../scripts/report.py"
