"""Normalised candidate sources, so a kernel that was already evaluated is not evaluated again.

Independent samples of one prompt, and ideas that land on the same code, often differ only in comments, docstrings
and spacing; compiling, verifying and timing such a copy costs GPU time and tells nothing new. The normal form is
the Python AST unparsed (comments, docstrings and formatting gone) with every multi-line string literal -- the
embedded C/CUDA sources -- stripped of ``//`` and ``/* */`` comments and re-spaced token by token. Two sources
with the same normal form are duplicates; any change to a constant, a name or an operator is not.
"""

from __future__ import annotations

import ast
import hashlib
import re

# C comments and the string/char literals they must not be searched inside.
_C_COMMENT_OR_LITERAL = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)
_C_TOKEN = re.compile(r'"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'|\w+|\S')
# Two punctuation characters that would read as another token if the space between them went away.
_JOINS = {"++", "--", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=", "-=", "*=", "/=", "%=", "&=", "|=",
          "^=", "->", "::", "##", "..", "/*", "*/", "//"}


def _strip_c_comments(code: str) -> str:
    def keep_literals(match: re.Match[str]) -> str:
        text = match.group(0)
        if text.startswith("//"):
            return ""
        if text.startswith("/*"):
            return " "
        return text

    return _C_COMMENT_OR_LITERAL.sub(keep_literals, code)


def normalise_c(code: str) -> str:
    """C/CUDA source without comments, with whitespace only where it separates two words or two punctuation
    characters that would otherwise read as one token (``a - -b`` is not ``a--b``), and preprocessor directives
    on lines of their own."""
    code = _strip_c_comments(code)
    out: list[str] = []
    prev_end = 0
    prev_word: bool | None = None
    directive = False
    for match in _C_TOKEN.finditer(code):
        gap = code[prev_end:match.start()]
        token = match.group(0)
        word = token[0].isalnum() or token[0] in "_\"'"
        newline = "\n" in gap or not out
        if directive and newline:
            out.append("\n")
            directive = False
        elif token == "#" and newline:
            if out:
                out.append("\n")
            directive = True
        elif gap and prev_word is not None and (
                (prev_word and word) or (not prev_word and not word and out[-1][-1] + token[0] in _JOINS)):
            out.append(" ")
        out.append(token)
        prev_end, prev_word = match.end(), word
    return "".join(out)


class _Normaliser(ast.NodeTransformer):
    """Drops string statements (docstrings and other no-op strings) and normalises embedded C sources."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                kept = [s for s in stmts if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                                                 and isinstance(s.value.value, str))]
                setattr(node, field, kept or ([ast.Pass()] if field == "body" else []))
        return super().generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str) and "\n" in node.value:
            return ast.copy_location(ast.Constant(normalise_c(node.value)), node)
        return node


def normalise(source: str) -> str:
    """The normal form of a candidate file; a file that does not parse is compared by its whitespace-collapsed
    text (it will fail to build either way, but once is enough)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return " ".join(source.split())
    return ast.unparse(_Normaliser().visit(tree))


def digest(source: str) -> str:
    """sha256 of the normal form: the key under which a candidate counts as already seen."""
    return hashlib.sha256(normalise(source).encode()).hexdigest()
