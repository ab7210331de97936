"""Model replies are untrusted text: ideas come back wrapped in prose and fences, code comes back truncated or
without the class the evaluator imports. Each case must give ideas or a failed candidate with a specific reason,
never an exception."""

import pytest

from kernelcraft.llm.types import Reply
from kernelcraft.search.offline_kernels.catalogue import KINDS
from kernelcraft.search.replies import extract_candidate, ideas_schema, match_kind, parse_ideas

GOOD = '''import torch
import torch.nn as nn

class ModelNew(nn.Module):
    def forward(self, x):
        return x
'''


def reply(text, finish_reason="stop", error=None):
    return Reply(key="k" * 64, text=None if error else text, finish_reason=finish_reason, error=error)


def test_ideas_are_read_from_json_inside_prose_and_a_code_fence():
    text = ('Here are my ideas:\n```json\n{"ideas": [{"kind": "memory access", "idea": "Use float4 loads.", '
            '"parent": "r1_i0_m0"}, {"kind": "control flow and loops", "idea": "Unroll by 4.", '
            '"parent": "reference"}]}\n```\nGood luck!')
    ideas, reason = parse_ideas(reply(text), ["r1_i0_m0", "reference"], 2)
    assert ideas == [{"kind": "memory access", "text": "Use float4 loads.", "parent": "r1_i0_m0"},
                     {"kind": "control flow and loops", "text": "Unroll by 4.", "parent": "reference"}]
    assert reason is None


def test_ideas_with_unknown_kinds_or_empty_text_are_dropped_and_the_count_is_capped():
    text = ('{"ideas": [{"kind": "magic", "idea": "Go faster."}, {"kind": "memory access", "idea": "  "}, '
            '{"kind": "Parallelism & Occupancy", "idea": "One block per row.", "parent": "nope"}, '
            '{"kind": "memory", "idea": "Coalesce the stores."}, '
            '{"kind": "memory", "idea": "coalesce  the stores."}, '
            '{"kind": "data type and precision", "idea": "Accumulate in fp32."}]}')
    ideas, reason = parse_ideas(reply(text), ["reference", "r1_i0_m0"], 2)
    assert ideas == [{"kind": "parallelism and occupancy", "text": "One block per row.", "parent": "reference"},
                     {"kind": "memory access", "text": "Coalesce the stores.", "parent": "reference"}]
    assert reason is None
    fewer, why = parse_ideas(reply(text), ["reference"], 5)
    assert len(fewer) == 3
    assert why == "model reply: 3 idea(s) dropped (empty, repeated or of an unknown kind)"


@pytest.mark.parametrize(("given", "expected"), [
    ("Memory Access", "memory access"), ("memory", "memory access"), ("latency hiding", KINDS[1]),
    ("compute", "compute and instructions"), ("loops", "control flow and loops"), ("tiling", None),
    ("data and control", None), ("", None), (None, None),
])
def test_kinds_are_matched_to_the_six_catalogue_kinds(given, expected):
    assert match_kind(given) == expected


def test_an_ideas_reply_without_json_or_with_an_error_gives_no_ideas_and_says_why():
    assert parse_ideas(reply("I cannot help with that."), ["reference"], 3) == (
        [], "model reply: no JSON list of ideas")
    assert parse_ideas(reply('{"ideas": [{"kind": "memory access", "idea": "Use', "length"), ["reference"], 3) == (
        [], "model reply: truncated (finish_reason=length)")
    assert parse_ideas(reply(None, error="HTTP 500 after 4 retries"), ["reference"], 3) == (
        [], "model call failed: HTTP 500 after 4 retries")


def test_the_ideas_schema_is_strict_and_names_the_kinds_and_the_seed_ids():
    schema = ideas_schema(["reference", "r2_i1_m0"])
    item = schema["properties"]["ideas"]["items"]
    assert item["properties"]["kind"]["enum"] == list(KINDS)
    assert item["properties"]["parent"]["enum"] == ["reference", "r2_i1_m0"]
    assert item["required"] == ["kind", "idea", "parent"] and item["additionalProperties"] is False
    assert schema["required"] == ["ideas"] and schema["additionalProperties"] is False


def test_the_fenced_python_block_defining_modelnew_is_the_candidate():
    text = f"Plan:\n```cuda\n__global__ void k() {{}}\n```\nThe file:\n```python\n{GOOD}```\nDone."
    assert extract_candidate(reply(text)) == (GOOD, None)


def test_of_several_python_blocks_the_last_one_defining_modelnew_wins():
    second = GOOD.replace("return x", "return x + 0")
    text = f"```python\n{GOOD}```\nBetter:\n```py\n{second}```\n```python\nprint('usage')\n```\n"
    assert extract_candidate(reply(text)) == (second, None)


@pytest.mark.parametrize(("text", "finish", "reason"), [
    (f"```python\n{GOOD}```", "length", "model reply: truncated (finish_reason=length)"),
    (f"Here it is:\n```python\n{GOOD[:60]}", "stop", "model reply: truncated (unterminated code block)"),
    (f"Here it is:\n{GOOD}", "stop", "model reply: no ```python code block"),
    ("```python\nclass Model(nn.Module):\n    pass\n```", "stop", "model reply: no class ModelNew"),
    ("```python\nclass ModelNew(nn.Module):\n    def forward(self, x)\n        return x\n```", "stop",
     "model reply: syntax error at line 2: expected ':'"),
    ("```python\ndef make():\n    class ModelNew:\n        pass\n```", "stop",
     "model reply: no class ModelNew at module level"),
    (f"```python\n{GOOD}```", "content_filter", "model reply: refused (finish_reason=content_filter)"),
])
def test_a_bad_implementation_reply_is_a_failure_with_its_specific_reason(text, finish, reason):
    assert extract_candidate(reply(text, finish)) == (None, reason)


def test_a_failed_call_is_a_failure_that_names_the_provider_error():
    failed = reply(None, error="timeout after 600 s")
    assert extract_candidate(failed) == (None, "model call failed: timeout after 600 s")
