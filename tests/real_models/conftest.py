"""Shared setup for the real-model tests: nothing may reach a model hub.

These tests quantize real checkpoints (MiniLM, MobileNetV2, FashionCNN,
SmolLM2) and check fidelity floors measured on this machine (see
``benchmarks/ptq.py`` for the full comparison). Every test is ``slow``; CI
still runs them.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
