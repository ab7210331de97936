"""Snakemake entry for the `ideas` rule; the logic is kernelcraft.rules.ideas."""

from kernelcraft import rules

rules.ideas(snakemake)  # noqa: F821 - injected by Snakemake
