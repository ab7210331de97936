"""The comparator's verdicts: every mismatch is a named reason, and both tolerances are recorded."""

import pytest
import torch

from kernelcraft.harness.verify.compare import compare_trial, merge_verdicts


def _meta(t, device="cpu"):
    return [{"shape": list(t.shape), "dtype": str(t.dtype), "device": device}]


def _cmp(out, ref, *, inputs_before=(), inputs_after=(), device="cpu", atol=1e-2, rtol=1e-2):
    return compare_trial([out], _meta(out, device), [ref], list(inputs_before), list(inputs_after), "cpu",
                         atol, rtol)


def test_identical_outputs_are_correct_with_zero_error():
    ref = torch.randn(8, 16)
    v = _cmp(ref.clone(), ref)
    assert v.correct and v.reasons == [] and v.max_abs_err == 0.0 and v.passes_strict


def test_error_within_the_configured_tolerance_but_above_1e4_is_correct_but_not_strict():
    ref = torch.ones(4, 4)
    v = _cmp(ref + 5e-3, ref)
    assert v.correct
    assert v.passes_strict is False
    assert abs(v.max_abs_err - 5e-3) < 1e-6


def test_error_above_tolerance_is_rejected_with_the_max_error():
    ref = torch.zeros(4, 4)
    out = ref.clone()
    out[2, 3] = 0.5
    v = _cmp(out, ref)
    assert not v.correct
    assert v.reasons == ["output: max error above tolerance (max abs 0.5, atol=0.01, rtol=0.01)"]


def test_nan_where_the_reference_is_finite_is_rejected():
    ref = torch.zeros(3)
    out = torch.tensor([0.0, float("nan"), float("inf")])
    v = _cmp(out, ref)
    assert v.reasons == ["output has 2 NaN/Inf values where the reference is finite"]


def test_wrong_shape_dtype_and_device_are_named():
    ref = torch.zeros(2, 3)
    assert _cmp(torch.zeros(3, 2), ref).reasons == ["output has shape (3, 2), expected (2, 3)"]
    assert _cmp(torch.zeros(2, 3, dtype=torch.float64), ref).reasons == [
        "output has dtype torch.float64, expected torch.float32"]
    assert _cmp(torch.zeros(2, 3), ref, device="cuda").reasons == ["output is on cuda, expected cpu"]


def test_integer_outputs_must_match_exactly():
    ref = torch.tensor([1, 2, 3])
    assert _cmp(torch.tensor([1, 2, 4]), ref).reasons == ["output: 1 elements differ from the reference"]


def test_modifying_an_input_in_place_is_rejected():
    x = torch.randn(5)
    changed = x.clone()
    changed[0] += 1
    v = _cmp(x.clone(), x.clone(), inputs_before=[x], inputs_after=[changed])
    assert v.reasons == ["modified input 0 in place"]


def test_a_candidate_is_correct_only_if_every_trial_is():
    ref = torch.zeros(2)
    good = _cmp(ref.clone(), ref)
    bad = _cmp(ref + 1, ref)
    merged = merge_verdicts([good, bad, good])
    assert not merged.correct and merged.max_abs_err == 1.0 and len(merged.reasons) == 1


def test_figures_accumulate_across_slices(monkeypatch):
    # Outputs larger than one slice: each finding is kept whichever slice it is in.
    import kernelcraft.harness.verify.compare as compare

    monkeypatch.setattr(compare, "CHUNK", 100)
    ref = torch.ones(1050)
    out = ref.clone()
    out[250] += 0.5  # third slice: the largest error
    out[1049] += 5e-3  # last, partial slice: within tolerance, above 1e-4
    v = _cmp(out, ref)
    assert not v.correct and abs(v.max_abs_err - 0.5) < 1e-6
    assert v.reasons == ["output: max error above tolerance (max abs 0.5, atol=0.01, rtol=0.01)"]
    out[250] = ref[250]
    v = _cmp(out, ref)
    assert v.correct and not v.passes_strict and abs(v.max_abs_err - 5e-3) < 1e-6
    out[1049] = float("nan")
    out[7] = float("inf")
    assert _cmp(out, ref).reasons == ["output has 2 NaN/Inf values where the reference is finite"]


def test_integer_mismatches_are_counted_across_slices(monkeypatch):
    import kernelcraft.harness.verify.compare as compare

    monkeypatch.setattr(compare, "CHUNK", 64)
    ref = torch.arange(1000)
    out = ref.clone()
    out[[3, 500, 999]] += 1
    assert _cmp(out, ref).reasons == ["output: 3 elements differ from the reference"]


def test_slices_are_a_share_of_the_output_between_bounds():
    # Temporaries scale with the slice: a fixed 4M-element slice cost a 64 MB output 200 MB of them.
    from kernelcraft.harness.verify.compare import CHUNK, MIN_CHUNK, SLICES, chunk_elements

    assert chunk_elements(1000) == MIN_CHUNK
    assert chunk_elements(16 * 2**20) == 16 * 2**20 // SLICES
    assert chunk_elements(2**30) == CHUNK


def test_half_precision_outputs_are_judged_in_single_precision():
    ref = torch.linspace(-4, 4, 4099).to(torch.bfloat16)
    assert _cmp(ref.clone(), ref).correct
    out = ref.clone()
    out[4098] = out[4098] * 1.5
    v = _cmp(out, ref)
    assert not v.correct and v.max_abs_err == pytest.approx(2.0)
