"""Loading KernelBench-format problems: the built-in suite and any directory of such files.

A problem is a Python file with ``class Model(nn.Module)``, ``get_inputs()`` and ``get_init_inputs()``. This
module finds them, validates them *without importing them* (discovery runs while Snakemake builds its DAG, so
it must stay fast and must not import torch), and, when a stage needs the real thing, executes a fresh private
copy of the file so no two problems or candidates ever share globals.

Optional metadata lives in a module-level literal dict::

    KERNELCRAFT = {"op": "softmax", "params": {"dim": -1}, "small": {"batch_size": 64, "dim": 4096}}

``small`` overrides module globals (the size constants get_inputs/get_init_inputs read at call time) when the
problem is loaded at size "small", which is what makes the suite runnable on a CPU.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelcraft.problems.ops import OPS, match_op

if TYPE_CHECKING:
    import torch
    from torch import nn

SIZES: tuple[str, ...] = ("full", "small")
REQUIRED_NAMES: tuple[str, ...] = ("Model", "get_inputs", "get_init_inputs")
METADATA_NAME = "KERNELCRAFT"
METADATA_KEYS: tuple[str, ...] = ("op", "params", "small", "flops", "bytes")

_module_counter = itertools.count()


class ProblemError(ValueError):
    """A file that is not a usable KernelBench problem; the message is one line starting with the path."""


@dataclass(frozen=True)
class Problem:
    """One reference problem at one size. Cheap to create: nothing is imported until a method needs it."""

    id: str
    path: Path
    size: str
    op: str | None
    params: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def load_module(self) -> types.ModuleType:
        """Execute the file as a new module, with this size's overrides applied.

        Each call returns its own module object under a unique name, so mutating one (a harness patching a
        global, a candidate monkey-patching) never leaks into another. The module is not left in
        ``sys.modules``; the source is compiled directly so no ``__pycache__`` is written next to the user's
        files.
        """
        name = f"kernelcraft_problem_{_identifier(self.id)}_{next(_module_counter)}"
        spec = importlib.util.spec_from_file_location(name, self.path)
        if spec is None:
            raise ProblemError(f"{self.path}: cannot be loaded as a Python module; give a .py file")
        module = importlib.util.module_from_spec(spec)
        source = self.source()
        # dataclasses and typing look names up through sys.modules while the module executes
        sys.modules[name] = module
        try:
            exec(compile(source, str(self.path), "exec", dont_inherit=True), module.__dict__)
        except Exception as exc:
            raise ProblemError(f"{self.path}: import failed: {_first_line(exc)}") from exc
        finally:
            sys.modules.pop(name, None)
        for required in REQUIRED_NAMES:
            if not hasattr(module, required):
                raise ProblemError(f"{self.path}: not a KernelBench problem: missing {_describe(required)}")
        if self.size == "small":
            _apply_overrides(module, self.path)
        return module

    def init_inputs(self) -> list:
        """``get_init_inputs()`` of a fresh module at this size: the Model constructor's arguments."""
        return list(self.load_module().get_init_inputs())

    def make_reference(self, seed: int, device: str | torch.device) -> nn.Module:
        """The reference Model in eval mode on ``device``, its weights drawn right after
        ``torch.manual_seed(seed)``.

        Same order as KernelBench (and the harness's ``instantiate``): constructor arguments first, then the
        seed, then construction on the CPU, then the move. So a candidate's ModelNew built the same way holds
        the same weights.
        """
        import torch

        module = self.load_module()
        init_inputs = list(module.get_init_inputs())
        torch.manual_seed(seed)
        model = module.Model(*init_inputs)
        return model.to(device).eval()

    def make_inputs(self, seed: int, device: str | torch.device) -> list:
        """``get_inputs()`` after seeding, with every tensor created directly on ``device``.

        Creating on the device (``with torch.device(device)``) rather than on the CPU and copying matters at
        full size: a 4096x65536 input is 1 GiB. Tensors keep their dtype (integer indices, boolean masks) and
        non-tensor inputs pass through unchanged. The same seed gives identical inputs on the same device.
        """
        import random

        import torch

        device = torch.device(device)
        module = self.load_module()
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            import numpy as np

            np.random.seed(seed % 2**32)
        except ImportError:  # numpy is optional for problems
            pass
        with device:
            inputs = module.get_inputs()
        return [_to_device(x, device) for x in inputs]

    def source(self) -> str:
        """The problem file's text."""
        return self.path.read_text(encoding="utf-8")


def load_problem(path: str | Path, size: str = "full") -> Problem:
    """Read and validate one problem file (without executing it).

    Raises ProblemError when the file does not parse, lacks Model/get_inputs/get_init_inputs, or carries
    malformed KERNELCRAFT metadata; ValueError for an unknown size.
    """
    _check_size(size)
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ProblemError(f"{path}: no such problem file; give the path of a KernelBench-format .py file")
    tree = _parse(path)
    missing = [name for name in REQUIRED_NAMES if name not in _top_level_names(tree)]
    if missing:
        raise ProblemError(f"{path}: not a KernelBench problem: missing {_describe(missing[0])}")
    meta = _metadata(tree, path)
    declared_op = meta.get("op")
    needs_detection = declared_op is None or "params" not in meta
    detected = match_op(path.read_text(encoding="utf-8")) if needs_detection else None
    op = declared_op if declared_op is not None else (detected.op if detected else None)
    if "params" in meta:
        params = dict(meta["params"])
    elif detected is not None and detected.op == op:
        params = dict(detected.params)
    else:
        params = {}
    return Problem(id=path.stem, path=path, size=size, op=op, params=params)


def builtin_dir() -> Path:
    """The directory of the shipped suite."""
    return Path(__file__).resolve().parent / "suite"


def builtin_ids() -> list[str]:
    """Ids of the shipped problems, sorted."""
    return sorted(p.stem for p in builtin_dir().glob("*.py") if not p.name.startswith("_"))


def discover(builtin: list[str] | str, dirs: list[str | Path], include: str | None, exclude: str | None,
             size: str) -> list[Problem]:
    """All problems of a run, sorted by id.

    ``builtin`` is "all" or a list of built-in ids ([] for none); ``dirs`` are KernelBench-style directories
    whose ``*.py`` files that define Model, get_inputs and get_init_inputs are problems (others, such as
    helpers, are skipped); ``include``/``exclude`` are regexes searched in the id. Two problems with one id
    are an error, as is an unknown built-in id. Does not import torch or the problem files.
    """
    _check_size(size)
    include_re = _compile_regex(include, "include")
    exclude_re = _compile_regex(exclude, "exclude")
    paths = [builtin_dir() / f"{pid}.py" for pid in _builtin_selection(builtin)]
    for directory in dirs:
        paths.extend(_problem_files(Path(directory)))
    chosen: dict[str, Path] = {}
    for path in paths:
        pid = path.stem
        if include_re is not None and not include_re.search(pid):
            continue
        if exclude_re is not None and exclude_re.search(pid):
            continue
        if pid in chosen:
            raise ValueError(f"duplicate problem id {pid!r}: {chosen[pid]} and {path}; "
                             "rename one or exclude it")
        chosen[pid] = path
    return [load_problem(chosen[pid], size) for pid in sorted(chosen)]


# ------------------------------------------------------------------------------------------------------------


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown problem size {size!r}; allowed values: {', '.join(SIZES)}")


def _builtin_selection(builtin: list[str] | str) -> list[str]:
    valid = builtin_ids()
    if isinstance(builtin, str):
        if builtin == "all":
            return valid
        raise ValueError(f"builtin must be \"all\" or a list of built-in ids, got {builtin!r}")
    unknown = [b for b in builtin if b not in valid]
    if unknown:
        raise ValueError(f"unknown built-in problem id {unknown[0]!r}; valid ids: {', '.join(valid)}")
    return list(dict.fromkeys(builtin))


def _compile_regex(pattern: str | None, what: str) -> re.Pattern[str] | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what} pattern {pattern!r} is not a valid regular expression: {exc}") from exc


def _problem_files(directory: Path) -> list[Path]:
    """The problem files of one directory (not recursive, as KernelBench's level directories are flat)."""
    directory = directory.expanduser().resolve()
    if not directory.is_dir():
        raise ValueError(f"problem directory {directory} does not exist; fix problems.dirs")
    found = []
    for path in sorted(directory.glob("*.py")):
        if path.is_file() and set(REQUIRED_NAMES) <= _top_level_names(_parse(path)):
            found.append(path)
    return found


def _parse(path: Path) -> ast.Module:
    try:
        return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ProblemError(f"{path}: syntax error at line {exc.lineno}: {exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ProblemError(f"{path}: cannot be read: {_first_line(exc)}") from exc


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level (class/def/assignment/import), which is where KernelBench puts
    them."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _metadata(tree: ast.Module, path: Path) -> dict[str, Any]:
    """The KERNELCRAFT dict, validated; {} when the file has none."""
    value_node = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == METADATA_NAME
                                                for t in node.targets):
            value_node = node.value
    if value_node is None:
        return {}
    try:
        meta = ast.literal_eval(value_node)
    except ValueError as exc:
        raise ProblemError(f"{path}: {METADATA_NAME} must be a literal dict (no names or calls): "
                           f"{_first_line(exc)}") from exc
    if not isinstance(meta, dict):
        raise ProblemError(f"{path}: {METADATA_NAME} must be a dict, got {type(meta).__name__}")
    unknown = sorted(set(meta) - set(METADATA_KEYS))
    if unknown:
        raise ProblemError(f"{path}: unknown {METADATA_NAME} key {unknown[0]!r}; allowed keys: "
                           f"{', '.join(METADATA_KEYS)}")
    op = meta.get("op")
    if op is not None and op not in OPS:
        raise ProblemError(f"{path}: {METADATA_NAME}['op'] = {op!r} is not a known op; use one of "
                           f"{', '.join(OPS)} (or leave it out)")
    for key in ("params", "small"):
        if key in meta and not (isinstance(meta[key], dict) and all(isinstance(k, str) for k in meta[key])):
            raise ProblemError(f"{path}: {METADATA_NAME}[{key!r}] must be a dict with string keys")
    return meta


def _apply_overrides(module: types.ModuleType, path: Path) -> None:
    meta = getattr(module, METADATA_NAME, None)
    small = meta.get("small") if isinstance(meta, dict) else None
    if not small:
        return
    for name, value in small.items():
        if not hasattr(module, name):
            raise ProblemError(f"{path}: {METADATA_NAME}['small'] overrides {name!r}, which the module does "
                               "not define; fix the name or define the global")
        setattr(module, name, value)


def _to_device(x: Any, device: torch.device) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x if x.device == device else x.to(device)
    if isinstance(x, list | tuple):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _describe(name: str) -> str:
    return f"{name}()" if name.startswith("get_") else f"class {name}"


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _identifier(text: str) -> str:
    return re.sub(r"\W", "_", text)
