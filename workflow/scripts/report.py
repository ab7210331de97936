"""Snakemake entry for the `report` rule; the logic is kernelcraft.rules.report."""

from kernelcraft import rules

rules.report(snakemake)  # noqa: F821 - injected by Snakemake
