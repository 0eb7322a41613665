"""Shared test setup: offline hub, one torch thread (two busy processes on two cores thrash)."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (media_fixtures, heads_synth, ...)

import torch  # noqa: E402

torch.set_num_threads(1)
