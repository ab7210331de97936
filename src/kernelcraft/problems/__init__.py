"""Reference problems: loading KernelBench-format files, the built-in suite, and op tags.

Importing this package does not import torch (discovery runs at Snakemake DAG-build time); the methods that
build tensors import it when called.
"""

from kernelcraft.problems.loader import (
    SIZES,
    Problem,
    ProblemError,
    builtin_dir,
    builtin_ids,
    discover,
    load_problem,
)
from kernelcraft.problems.ops import OPS, OpMatch, detect_op, match_op, op_family

__all__ = [
    "OPS",
    "SIZES",
    "OpMatch",
    "Problem",
    "ProblemError",
    "builtin_dir",
    "builtin_ids",
    "detect_op",
    "discover",
    "load_problem",
    "match_op",
    "op_family",
]
