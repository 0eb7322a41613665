"""Shared test setup: offline hub, one torch thread (two busy processes on two cores thrash), a normal Ctrl-C."""

import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/ helpers (media_fixtures, heads_synth, ...)

import torch  # noqa: E402

torch.set_num_threads(1)

# The tests that send SIGINT to a command need it to reach Python's KeyboardInterrupt. A shell starts background
# jobs (`make test &`, nohup) with SIGINT ignored, and children inherit an ignored signal; a handled one is reset
# to the default at exec, so handling it here gives every command the tests start a normal Ctrl-C.
signal.signal(signal.SIGINT, signal.default_int_handler)
