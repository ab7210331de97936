"""Snakemake entry for the `benchmark` rule; the logic is kernelcraft.rules.benchmark."""

from kernelcraft import rules

rules.benchmark(snakemake)  # noqa: F821 - injected by Snakemake
