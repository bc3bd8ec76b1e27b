"""Fixtures for hyena_dna's own tests: no dependency on tune_ph or on the repository's tests/conftest.py.

These tests run from the repository root (`pytest`, whose testpaths include hyena-dna/tests) or on their own
(`pytest hyena-dna/tests`, or `pytest` inside hyena-dna/). pytest imports them in its default "prepend" mode
as top-level modules, so a test module here must not share its file name with one in the repository's tests/
(pytest would stop with "import file mismatch"); conftest.py files are the exception pytest handles itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# A checkout sits beside ../shared (the reference material), so the fixtures are found there when the variable is
# unset; a fresh clone without it skips these tests.
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
FIXTURES = os.environ.get("HYENA_REF_FIXTURES") or (str(_BESIDE_CHECKOUT) if _BESIDE_CHECKOUT.is_dir() else None)
NO_FIXTURES_REASON = f"HYENA_REF_FIXTURES is unset and {_BESIDE_CHECKOUT} does not exist"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded; spinning thread pools crawl on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def ref_fixtures() -> Path:
    """The reference fixtures folder (skips the test when there is none)."""
    if not FIXTURES:
        pytest.skip(NO_FIXTURES_REASON)
    return Path(FIXTURES)
