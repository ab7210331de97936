"""Snakemake entry for the `verify` rule; the logic is kernelcraft.rules.verify."""

from kernelcraft import rules

rules.verify(snakemake)  # noqa: F821 - injected by Snakemake
