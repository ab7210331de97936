"""Snakemake entry for the `compile` rule; the logic is kernelcraft.rules.compile."""

from kernelcraft import rules

rules.compile(snakemake)  # noqa: F821 - injected by Snakemake
