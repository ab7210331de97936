"""Snakemake entry for the `select` rule; the logic is kernelcraft.rules.select."""

from kernelcraft import rules

rules.select(snakemake)  # noqa: F821 - injected by Snakemake
