"""Fixtures for every test.

Safety net: every WebRTC peer created in the test process gathers host candidates on
127.0.0.1 only (aioice would otherwise use the machine's real interfaces).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from booth.ice import restrict_host_addresses

ARTIFACTS = Path(__file__).resolve().parent.parent / "var" / "test-artifacts"


@pytest.fixture(autouse=True, scope="session")
def _loopback_only_ice() -> Iterator[None]:
    restrict_host_addresses(["127.0.0.1"])
    yield
    restrict_host_addresses([])


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """Collect garbage after every test, so that a socket or transport a test leaves
    open is reported (warnings are errors) against that test, not a later one."""
    yield
    gc.collect()


@pytest.fixture
def artifacts() -> Path:
    """Where tests save screenshots and other files for people to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
