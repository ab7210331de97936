"""The verification trials: the trusted parent reproduces exactly the inputs the candidate's process holds, and
reuse trials renew the same buffers' contents in place."""

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
    """The child's sequence: fresh inputs, or the previous trial's buffers renewed."""
    held, seen = None, []
    for spec in plan:
        if spec["reuse"] and held is not None:
            held = trials.renew(held, spec)
        else:
            held = trials.make_inputs(problem, spec, "cpu")
        seen.append([t.clone() for t in held])
    return seen


def test_the_parent_reproduces_every_trial_the_child_holds(tmp_path):
    problem = _problem(tmp_path)
    plan = trials.trial_plan(0, "mm_ref", 1, 3)
    assert [s["reuse"] for s in plan] == [False, False, True, True]
    assert [s["dist"] for s in plan] == ["uniform", "problem", "scaled", "problem"]
    for k, child in enumerate(_as_the_child_makes_them(problem, plan)):
        parent = trials.trial_inputs(problem, plan, k, "cpu")
        assert all(torch.equal(a, b) for a, b in zip(parent, child, strict=True)), plan[k]


def test_a_reuse_trial_keeps_the_buffers_and_replaces_their_values(tmp_path):
    problem = _problem(tmp_path)
    plan = trials.trial_plan(0, "mm_ref", 1, 3)
    held = trials.make_inputs(problem, plan[1], "cpu")
    before = [t.clone() for t in held]
    pointers = [t.data_ptr() for t in held]
    refilled = trials.renew(held, plan[2])
    assert [t.data_ptr() for t in refilled] == pointers  # a cache keyed on the pointer sees the same buffers
    assert not torch.isclose(refilled[0], before[0]).any() and not torch.isclose(refilled[1], before[1]).any()
    # The problem's own distribution, shifted and scaled: wide enough that a near-constant output fails.
    assert plan[2]["dist"] == "scaled" and float(refilled[0].max() - refilled[0].min()) > 16.0


def test_two_inputs_of_one_shape_never_hold_the_same_values(tmp_path):
    problem = _problem(tmp_path)
    plan = trials.trial_plan(0, "mm_ref", 1, 3)
    uniform = trials.make_inputs(problem, plan[0], "cpu")
    assert plan[0]["dist"] == "uniform" and not torch.equal(uniform[0], uniform[1])


def test_renewal_halves_about_half_the_elements_and_keeps_zeros_signs_and_structure():
    # In place and exact: a triangular input stays triangular, a positive one positive (problems whose inputs
    # have such structure stay well posed), yet about half of the values change.
    x = torch.triu(torch.rand(256, 256) + 0.5)
    before = x.clone()
    pointer = x.data_ptr()
    (renewed,) = trials.renew([x], {"seed": 3, "dist": "problem"})
    assert renewed.data_ptr() == pointer
    assert torch.equal(torch.tril(renewed, -1), torch.zeros_like(renewed)) and bool((renewed >= 0).all())
    ratio = renewed[before != 0] / before[before != 0]
    assert bool(((ratio == 0.5) | (ratio == 1.0)).all())
    assert 0.45 < float((ratio == 0.5).float().mean()) < 0.55
    (again,) = trials.renew([before.clone()], {"seed": 3, "dist": "problem"})
    assert torch.equal(again, renewed)  # the parent remakes it exactly


def test_a_reuse_trial_never_starts_from_uniform_values():
    for n in range(1, 7):
        plan = trials.trial_plan(0, "p", 1, n)
        assert len(plan) == n + 1 and plan[-1]["reuse"] and plan[-1]["warm_calls"] == trials.LATE_CALLS
        for k, spec in enumerate(plan):
            if spec["reuse"]:
                assert k > 0 and plan[k - 1]["dist"] != "uniform", (n, plan)


def test_trials_of_a_refused_distribution_draw_from_the_problems_own_and_keep_their_seeds():
    plan = trials.trial_plan(0, "p", 1, 4)
    settled = trials.on_problem_inputs(plan, {"scaled": "x must lie in [0, 1]"})
    assert [s["dist"] for s in plan] == ["uniform", "problem", "scaled", "problem", "scaled"]
    assert [s["dist"] for s in settled] == ["uniform", "problem", "problem", "problem", "problem"]
    assert [(s["seed"], s["reuse"], s["warm_calls"]) for s in settled] == \
        [(s["seed"], s["reuse"], s["warm_calls"]) for s in plan]
