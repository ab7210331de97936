"""The judge step: decide, in the trusted parent, whether what a candidate's process reported can be believed.

Why apart from verify and timing: their evidence is gathered where the candidate runs, and the rules that reject
it are one set for every call, verified or timed. In: the operator record of the candidate's calls (``audit``: the
recording half runs in the child from before the candidate is imported, ``audit.judge`` runs here) and the timing
step's measurements (``speed``). Out: reasons (none means accepted) and the benchmark record. The per-trial
``Verdict`` and ``merge_verdicts`` stay with the comparator that produces them (``verify/compare.py``).
"""
