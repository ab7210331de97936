"""The run-time audit of a candidate's forward (harness/audit.py): what it records, and what its first use costs."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
import torch
from kernelcraft.harness.audit import recorder
x = torch.randn(64)
with recorder() as rec:
    torch.softmax(x, 0).sum()
print(json.dumps({"ops": dict(rec.ops), "dynamo": "torch._dynamo" in sys.modules}))
"""


def test_first_recording_in_a_fresh_process_records_ops_without_importing_dynamo() -> None:
    """Every verification worker records forwards; PyTorch's default wrapping of a dispatch mode imports all of
    torch._dynamo on first use (seconds on a cold host), so the counter opts out of it."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["ops"] == {"_softmax": 1, "sum": 1}
    assert doc["dynamo"] is False
