"""kernelcraft: idea-branching search for fast GPU kernels, as a Snakemake workflow."""

__version__ = "0.1.0"
