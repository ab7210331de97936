"""Snakemake entry for the `manifest` rule; the logic is kernelcraft.rules.manifest."""

from kernelcraft import rules

rules.manifest(snakemake)  # noqa: F821 - injected by Snakemake
