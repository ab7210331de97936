"""The sandbox step: run untrusted candidate code, each task in a child process of its own, and hand back only data.

Why a step of its own: a candidate's process is hostile, so everything that compares or decides stays in the
trusted parent, which never imports candidate code. In: a task name and JSON arguments from the parent (build,
evaluate, baseline), and the parent's replies at each hand-over. Out: plain JSON results and tensors (through CUDA
IPC, or a file loaded with ``weights_only=True``), or a recorded reason for every way the child can fail (crash,
timeout, memory, signal). ``worker`` is the parent's side, ``zygote`` the warm process that forks the children,
``tasks`` what a child runs, ``candidate`` how it imports the candidate, ``env`` the environment it gets and
``transfer`` the CUDA IPC hand-over.
"""
