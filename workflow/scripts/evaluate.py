"""Snakemake entry for the `evaluate` rule (verify, then benchmark); the logic is kernelcraft.rules.evaluate."""

from kernelcraft import rules

rules.evaluate(snakemake)  # noqa: F821 - injected by Snakemake
