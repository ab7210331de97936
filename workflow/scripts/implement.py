"""Snakemake entry for the `implement` rule; the logic is kernelcraft.rules.implement."""

from kernelcraft import rules

rules.implement(snakemake)  # noqa: F821 - injected by Snakemake
