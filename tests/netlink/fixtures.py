"""pytest fixtures for the emulated link.

In a test module::

    from tests.netlink.fixtures import link_fixture

    station_link = link_fixture("station")

    async def test_something(station_link: EmulatedLink) -> None:
        ...

The fixture builds the link before the test and tears it down after it (also when the
test fails). Without root the test is skipped: network namespaces need it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import pytest

from tests.netlink.link import EmulatedLink, emulated_link
from tests.netlink.profiles import LinkProfile


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("link emulation needs root (network namespaces, TAP devices)")


def link_fixture(profile: LinkProfile | str) -> Callable[[], AsyncIterator[EmulatedLink]]:
    """A function-scoped fixture yielding an :class:`EmulatedLink` with ``profile``."""

    async def fixture() -> AsyncIterator[EmulatedLink]:
        require_root()
        async with emulated_link(profile) as link:
            yield link

    return pytest.fixture(fixture)
