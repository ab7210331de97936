"""Snakemake entry for the `baseline` rule; the logic is kernelcraft.rules.baseline."""

from kernelcraft import rules

rules.baseline(snakemake)  # noqa: F821 - injected by Snakemake
