"""The evaluator, as a pipeline whose data flows one way: build -> sandbox -> verify -> timing -> judge.

Each step is a subpackage with one job: ``build`` turns a candidate's source into kernels (and is the only part a
candidate may import), ``sandbox`` runs untrusted code in child processes and hands its results over, ``verify``
decides whether the outputs match the reference, ``timing`` measures the verified ones against the eager
reference, and ``judge`` decides whether what a candidate's process reported can be believed. ``evaluate_round``
chains the steps for one (problem, round); the compile stage is ``build.compile_round``.
"""
