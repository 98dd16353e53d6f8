"""Shared benchmark data lives beside the repository: <repo>/../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def mbpp_path() -> str:
    return str(SHARED_DATA / "mbpp" / "mbpp.jsonl")


@pytest.fixture(scope="session")
def infilling_dir() -> str:
    return str(SHARED_DATA / "humaneval-infilling")
