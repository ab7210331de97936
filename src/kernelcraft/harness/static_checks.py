"""Checks on a candidate's source text, made in the trusted parent without executing it.

They complement the run-time audit (audit.py) for patterns that are wrong even when the path they guard is not
taken during verification: a try/except that would fall back to PyTorch when the kernel fails, and reuse of the
reference `Model` (inheriting from it or calling it).
"""

from __future__ import annotations

import ast


def _model_new(tree: ast.Module) -> ast.ClassDef | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            return node
    return None


def _names(node: ast.AST) -> set[str]:
    out = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            out.add(sub.attr)
    return out


def check_source(source: str) -> list[str]:
    """Reasons to reject found in the source; empty when none. A syntax error is left to the build step."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    reasons: list[str] = []
    cls = _model_new(tree)
    if cls is not None and "Model" in {n for b in cls.bases for n in _names(b)}:
        reasons.append("inherits from the reference Model")
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            called = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if called == "Model":
                reasons.append("calls the reference Model")
                break
    if cls is not None:
        for node in ast.walk(cls):
            if isinstance(node, ast.Try) and node.handlers:
                handled = set().union(*(_names(h) for h in node.handlers))
                only_reraise = all(all(isinstance(s, ast.Raise) for s in h.body) for h in node.handlers)
                if not only_reraise and handled & {"torch", "F", "functional", "super", "Model", "forward"}:
                    reasons.append("try/except fallback to PyTorch around the kernel")
                    break
    return reasons
