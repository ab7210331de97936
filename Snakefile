# kernelcraft: idea-branching search for fast GPU kernels.
# Thin on purpose: config + schema validation, includes, rule all. The logic lives in src/kernelcraft.
import os

from snakemake.utils import min_version, validate

from kernelcraft.config import exit_on_bad_config

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


# One line naming the bad key first; then Snakemake's own schema validation (which also fills defaults).
exit_on_bad_config(config)
validate(config, "workflow/schemas/config.schema.yaml")


# The image built from containers/Dockerfile; used when run with --software-deployment-method apptainer.
container: config["container"]


include: "workflow/rules/common.smk"

include: "workflow/rules/baseline.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        f"{RUN}/report.html",
        f"{RUN}/candidates.csv",
        f"{RUN}/manifest.json",
