"""The verify step: decide whether a candidate computes what the reference computes, before any time is spent on it.

Why in the trusted parent: a candidate could patch a comparator or a reference that lived in its own process. In:
the candidate's source (``static_checks``, before anything runs) and, trial by trial, the outputs its process
hands over for inputs both sides make from the same seeds (``trials``). Out: one ``Verdict`` per trial from
``compare``, merged into the candidate's (``compare.merge_verdicts``); ``verify_round`` holds the reference, built
once per job, and the per-round driver. Only a correct candidate goes on to timing.
"""
