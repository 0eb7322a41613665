"""Imported once by the sweep's worker server (procs.py) before it forks workers: what every run imports, so that
no worker pays for it. Imports only: no torch op may run here (a forked OpenMP thread pool hangs the child)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot  # noqa: E402,F401 - the learning-curve PNG of every run
import torch  # noqa: E402,F401
import torch._dynamo  # noqa: E402,F401 - torch.optim imports it when the first optimizer is built (~1 s)

import merc.heads.runs  # noqa: E402,F401
import merc.pipelines.sweep.worker  # noqa: E402,F401
from merc.heads.registry import MODULES  # noqa: E402

for _module in sorted(set(MODULES.values())):
    __import__(_module)
