"""The timing step: measure a verified candidate against the eager reference under one protocol.

Why two modules: ``protocol`` is the measurement itself (device events, warm-up, L2 flush, rotated inputs, wall
clock beside the events, the speed-of-light floor), and it runs in both processes: the candidate's child imports it
before the candidate (``sandbox/tasks.py``) so its clocks are bound before candidate code could patch them.
``benchmark_round`` is the parent's side: it times the reference between the candidate's blocks and the baseline
stage's eager and torch.compile references. In: a verified candidate and the reference. Out: per-call samples,
summarized, and the floor, which the judge step turns into the benchmark record.
"""
