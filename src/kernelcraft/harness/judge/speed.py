"""Whether a candidate's measured time can be believed, and the benchmark record it becomes. Runs in the trusted
parent, on what the timing step measured (the candidate's blocks from its process, the eager reference's from this
one, the speed-of-light floor): a time with work hidden from the timed stream, or below the floor, is rejected with
a reason rather than reported as a speedup."""

from __future__ import annotations

from kernelcraft.harness.timing.protocol import hidden_work

# A measured time this far below the floor is impossible, not fast (the floor itself is measured, so allow noise).
FLOOR_SLACK = 0.9


def judge_timing(result: dict, floor: dict) -> dict:
    """Turn one timing child's measurements into the benchmark record, rejecting impossible times (``floor`` is
    timing.protocol.speed_of_light's measurement)."""
    c, e = result["candidate"], result["eager"]
    wall = result.get("wall", {}).get("candidate", c)
    floor_ms = floor.get("floor_ms")
    record = {
        "timed": True, "reason": None,
        "time_ms": c["median_ms"], "time_iqr_ms": c["iqr_ms"],
        "eager_ms": e["median_ms"], "eager_iqr_ms": e["iqr_ms"],
        "speedup_eager": e["median_ms"] / c["median_ms"] if c["median_ms"] > 0 else None,
        "wall_ms": wall["median_ms"], "floor_ms": floor_ms,
        "pct_of_floor": (100.0 * floor_ms / c["median_ms"]) if (floor_ms and c["median_ms"] > 0) else None,
        "bandwidth_gbs": floor.get("bandwidth_gbs"), "floor_kind": floor.get("floor_kind"),
        "flops": floor.get("flops"), "peak_tflops": floor.get("peak_tflops"),
        "samples": c["n"], "input_sets": result.get("input_sets"), "phases": result.get("phases"),
    }
    if hidden_work(c["median_ms"], wall["median_ms"]):
        record.update(timed=False, reason=(
            f"work outside the timed stream: {wall['median_ms']:.4g} ms on the wall clock, "
            f"{c['median_ms']:.4g} ms between the stream's events"))
    elif floor_ms and floor.get("enforce_floor") and c["median_ms"] < FLOOR_SLACK * floor_ms:
        basis = ("FLOPs / measured matmul peak" if floor.get("floor_kind") == "compute"
                 else "bytes moved / measured copy bandwidth")
        record.update(timed=False, reason=(
            f"impossible time: {c['median_ms']:.4g} ms is below the speed-of-light floor of {floor_ms:.4g} ms "
            f"({basis})"))
    return record
