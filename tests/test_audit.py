"""The run-time audit of a candidate's calls (harness/judge/audit.py): what it records, and how the parent judges it."""

from __future__ import annotations

import json
import subprocess
import sys

from kernelcraft.harness.judge.audit import judge

PROBE = """
import json, os, threading
import torch
from kernelcraft.harness.judge.audit import Audit
audit = Audit()
x = torch.randn(64, 64)
torch.relu(x)  # harness work between calls: outside every forward, not the candidate's
for _ in range(2):
    with audit.forward():
        y = torch.empty_like(x)
        torch.softmax(x, 0)
        t = threading.Thread(target=lambda: torch.tanh(x)); t.start(); t.join()
summary = audit.cut()
with audit.forward():
    torch.sigmoid(x)
again = audit.cut()
print(json.dumps({"first": summary, "second": again}), flush=True)
os._exit(0)  # as candidate processes end: the session still open is never torn down
"""


def _probe() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_audit_records_top_level_operators_inside_forwards_on_every_thread_and_restarts_at_each_cut():
    doc = _probe()
    first = doc["first"]
    assert first["calls"] == 2 and first["recorded_calls"] == 2
    # softmax's own inner _softmax and empty_like's empty_strided are nested, not counted; relu ran outside.
    assert first["torch_ops"] == {"empty_like": 2, "softmax": 2, "tanh": 2}
    assert doc["second"]["torch_ops"] == {"sigmoid": 1} and doc["second"]["calls"] == 1


def test_calls_missing_from_the_record_mean_the_audit_was_switched_off():
    reasons = judge({"calls": 5, "recorded_calls": 3, "torch_ops": {}, "launches": {"k": 5}}, "reject")
    assert reasons == ["switched the audit off: 3 of 5 calls recorded"]


def test_a_call_without_a_compiled_kernel_is_named_even_when_other_calls_had_one():
    reasons = judge({"calls": 4, "recorded_calls": 4, "torch_ops": {"zeros_like": 2}, "launches": {"k": 2}},
                    "allow_partial")
    assert reasons == ["no compiled kernel ran in some calls (2 kernel calls in 4 calls)"]


def test_pytorch_compute_beside_a_kernel_follows_the_policy():
    summary = {"calls": 1, "recorded_calls": 1, "torch_ops": {"softmax": 1, "empty_like": 1}, "launches": {"k": 1}}
    assert judge(summary, "reject") == [
        "part of the work is done by PyTorch (aten.softmax); verify.pytorch_compute is reject"]
    assert judge(summary, "allow_partial") == []
