"""The verification trials: the trusted parent reproduces exactly the inputs the candidate's process holds, and
reuse trials refill the same buffers with new contents."""

import textwrap

import torch

from kernelcraft.harness.verify import trials
from kernelcraft.problems import load_problem

PROBLEM = textwrap.dedent('''
    import torch
    import torch.nn as nn

    class Model(nn.Module):
        def forward(self, a, b, idx):
            return a @ b + idx.float().sum()

    def get_inputs():
        return [torch.randn(8, 8), torch.randn(8, 8), torch.randint(0, 5, (4,))]

    def get_init_inputs():
        return []
''')


def _problem(tmp_path):
    path = tmp_path / "mm_ref.py"
    path.write_text(PROBLEM)
    return load_problem(path, "full")


def _as_the_child_makes_them(problem, plan):
    """The child's sequence: fresh inputs, or the previous trial's buffers refilled."""
    held, seen = None, []
    for spec in plan:
        fresh = trials.make_inputs(problem, spec, "cpu")
        held = trials.refill(held, fresh) if spec["reuse"] and held is not None else fresh
        seen.append([t.clone() for t in held])
    return seen


def test_the_parent_reproduces_every_trial_the_child_holds(tmp_path):
    problem = _problem(tmp_path)
    plan = trials.trial_plan(0, "mm_ref", 1, 3)
    assert [s["reuse"] for s in plan] == [False, True, False, True]
    for spec, child in zip(plan, _as_the_child_makes_them(problem, plan), strict=True):
        parent = trials.make_inputs(problem, spec, "cpu")
        assert all(torch.equal(a, b) for a, b in zip(parent, child, strict=True)), spec


def test_a_reuse_trial_keeps_the_buffers_and_replaces_their_values(tmp_path):
    problem = _problem(tmp_path)
    plan = trials.trial_plan(0, "mm_ref", 1, 3)
    held = trials.make_inputs(problem, plan[0], "cpu")
    before = [t.clone() for t in held]
    pointers = [t.data_ptr() for t in held]
    refilled = trials.refill(held, trials.make_inputs(problem, plan[1], "cpu"))
    assert [t.data_ptr() for t in refilled] == pointers  # a cache keyed on the pointer sees the same buffers
    assert not torch.isclose(refilled[0], before[0]).any() and not torch.isclose(refilled[1], before[1]).any()
    # The problem's own distribution, shifted and scaled: wide enough that a near-constant output fails.
    assert plan[1]["dist"] == "scaled" and float(refilled[0].max() - refilled[0].min()) > 16.0


def test_two_inputs_of_one_shape_never_hold_the_same_values(tmp_path):
    problem = _problem(tmp_path)
    plan = trials.trial_plan(0, "mm_ref", 1, 3)
    uniform = trials.make_inputs(problem, plan[2], "cpu")
    assert plan[2]["dist"] == "uniform" and not torch.equal(uniform[0], uniform[1])
