"""Reading model replies: a list of ideas from the ideas prompt, a candidate file from the implementation prompt.

Models wrap JSON in code fences, put prose around it, invent kinds, run out of tokens mid-file or forget the class
the evaluator imports. None of that may stop the workflow: a bad ideas reply yields fewer ideas with a reason, and
a bad implementation reply becomes a failed candidate whose one-line reason says what was wrong with the reply
(the reason lands in candidates.csv and the report, so it must be specific).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

from kernelcraft.llm.types import Reply
from kernelcraft.search.offline_kernels.catalogue import KINDS

PYTHON_LANGS = ("", "python", "py", "python3")
_FENCE = re.compile(r"^\s*```\s*([A-Za-z0-9_+.-]*)")


def ideas_schema(parent_ids: list[str]) -> dict[str, Any]:
    """The JSON schema of the ideas reply, passed as ``Request.json_schema`` (structured output): strict-mode
    compatible (every property required, no extra properties)."""
    idea = {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": list(KINDS)},
            "idea": {"type": "string"},
            "parent": {"type": "string", "enum": list(parent_ids)},
        },
        "required": ["kind", "idea", "parent"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {"ideas": {"type": "array", "items": idea}}, "required": ["ideas"],
            "additionalProperties": False}


def _squash(text: str) -> str:
    return " ".join(str(text).lower().replace("_", " ").replace("-", " ").split())


def match_kind(kind: Any) -> str | None:
    """The catalogue kind a model meant: exact up to case and spacing, else the one kind it names a unique part of
    ("memory", "Parallelism & occupancy"); None when it names none or several."""
    if not isinstance(kind, str) or not kind.strip():
        return None
    want = _squash(kind)
    for k in KINDS:
        if _squash(k) == want:
            return k
    words = set(re.findall(r"[a-z]+", want)) - {"and", "the", "of"}
    hits = [k for k in KINDS if words & set(re.findall(r"[a-z]+", _squash(k)))]
    return hits[0] if len(hits) == 1 else None


def _json_values(text: str) -> list[Any]:
    """Every JSON object or array that parses at some position of ``text``, outermost first."""
    decoder = json.JSONDecoder()
    found = []
    i = 0
    while i < len(text):
        if text[i] in "{[":
            try:
                value, end = decoder.raw_decode(text, i)
            except ValueError:
                i += 1
                continue
            found.append(value)
            i = end
        else:
            i += 1
    return found


def parse_ideas(reply: Reply, parent_ids: list[str], count: int) -> tuple[list[dict], str | None]:
    """At most ``count`` ideas ``{kind, text, parent}`` from an ideas reply, and a reason when it gave fewer.

    Ideas with an empty text or an unknown kind are dropped; a parent that is not a seed id becomes the first
    (best) seed; repeated texts count once.
    """
    if not reply.ok:
        return [], f"model call failed: {reply.error}"
    items = None
    for value in _json_values(reply.text or ""):
        if isinstance(value, dict) and isinstance(value.get("ideas"), list):
            items = value["ideas"]
            break
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            items = value
            break
    if items is None:
        if reply.finish_reason == "length":
            return [], "model reply: truncated (finish_reason=length)"
        return [], "model reply: no JSON list of ideas"
    ideas: list[dict] = []
    seen: set[str] = set()
    dropped = 0
    for item in items:
        if not isinstance(item, dict):
            dropped += 1
            continue
        text = " ".join(str(item.get("idea") or item.get("text") or "").split())
        kind = match_kind(item.get("kind"))
        if not text or kind is None or _squash(text) in seen:
            dropped += 1
            continue
        seen.add(_squash(text))
        parent = str(item.get("parent", ""))
        ideas.append({"kind": kind, "text": text, "parent": parent if parent in parent_ids else parent_ids[0]})
    reason = None
    if dropped and len(ideas) < count:
        reason = f"model reply: {dropped} idea(s) dropped (empty, repeated or of an unknown kind)"
    elif len(ideas) < count:
        reason = f"model reply: {len(ideas)} of {count} ideas"
    return ideas[:count], reason


def code_blocks(text: str) -> tuple[list[tuple[str, str]], bool]:
    """The fenced blocks of a Markdown reply as (language, body), and whether the last fence was left open."""
    blocks: list[tuple[str, str]] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        match = _FENCE.match(line)
        if lang is None:
            if match:
                lang, body = match[1].lower(), []
        elif match and not match[1] and line.strip() == "```":
            blocks.append((lang, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    if lang is not None:
        blocks.append((lang, "\n".join(body) + "\n"))
    return blocks, lang is not None


def _defines_model_new(tree: ast.Module) -> bool:
    return any(isinstance(node, ast.ClassDef) and node.name == "ModelNew" for node in tree.body)


def extract_candidate(reply: Reply) -> tuple[str | None, str | None]:
    """(source, None) for a usable candidate file, else (None, one-line reason). The source is the fenced Python
    block that defines ``ModelNew`` (the last one if several do)."""
    if not reply.ok:
        return None, f"model call failed: {reply.error}"
    if reply.finish_reason == "length":
        return None, "model reply: truncated (finish_reason=length)"
    if reply.finish_reason == "content_filter":
        return None, "model reply: refused (finish_reason=content_filter)"
    blocks, open_end = code_blocks(reply.text or "")
    python = [(i, body) for i, (lang, body) in enumerate(blocks) if lang in PYTHON_LANGS]
    if not python:
        return None, "model reply: no ```python code block"
    with_class = [(i, body) for i, body in python if "class ModelNew" in body]
    if open_end and (not with_class or with_class[-1][0] == len(blocks) - 1):
        return None, "model reply: truncated (unterminated code block)"
    if not with_class:
        return None, "model reply: no class ModelNew"
    source = with_class[-1][1]
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return None, f"model reply: syntax error at line {exc.lineno}: {exc.msg}"
    if not _defines_model_new(tree):
        return None, "model reply: no class ModelNew at module level"
    return source, None
