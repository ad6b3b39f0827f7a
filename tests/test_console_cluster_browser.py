"""The staff page on several signaling nodes while Redis is away, in Debian's Chromium.

Two ``python -m signaling`` nodes on real PostgreSQL and a Redis server of this test's
own; the console runs in this process on the same database. Redis stops while an HQ
staff member is taking calls and a branch staff member watches the booths: both pages
stay connected to their node and show, in a banner, that the nodes cannot reach each
other (for HQ: what they do is handled once it is back); when Redis returns the banners
go and the HQ page says so.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import Playwright, expect

from hq_console.app import create_app
from shared.config import ConsoleConfig
from tests.cluster_support import Cluster, running_cluster
from tests.postgres_support import postgres_server, postgres_url
from tests.redis_support import RedisServer, own_redis_server
from tests.signaling_support import TOKEN_SECRET, prepare_database
from tests.test_console_browser import (
    _chromium,
    _sign_in,
    _sign_in_hq,
    _start_taking_calls,
    browser_marks,
)
from tests.test_console_browser import playwright as playwright

__all__ = ["own_redis_server", "playwright", "postgres_server", "postgres_url"]  # fixtures

pytestmark = browser_marks

BANNER = "サーバー間の連絡が途絶えています"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def cluster(
    tmp_path: Path, postgres_url: str, own_redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    await prepare_database(postgres_url)
    async with running_cluster(
        tmp_path, postgres_url, own_redis_server.url, node_ids=("a", "b")
    ) as running:
        yield running


@pytest.fixture
async def console_url(cluster: Cluster) -> AsyncIterator[str]:
    port = _free_port()
    config = ConsoleConfig(
        host="127.0.0.1",
        port=port,
        database_url=cluster.database_url,
        token_secret=TOKEN_SECRET,
        signaling_urls=[f"{node.ws_url}/ws/staff" for node in cluster.nodes.values()],
        token_ttl_s=60,
    )
    runner = web.AppRunner(create_app(config), shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_the_staff_page_says_when_the_nodes_cannot_reach_each_other(
    cluster: Cluster,
    console_url: str,
    own_redis_server: RedisServer,
    playwright: Playwright,
    tmp_path: Path,
    artifacts: Path,
) -> None:
    context = await _chromium(playwright, tmp_path / "hq-profile", fake_media=False)
    branch_context = await _chromium(playwright, tmp_path / "branch-profile", fake_media=False)
    try:
        page = await context.new_page()
        await _sign_in_hq(page, console_url)
        await _start_taking_calls(page)
        banner = page.locator("#service-notice")
        await expect(banner).to_be_hidden()
        branch = await branch_context.new_page()
        await _sign_in(branch, console_url, "takahashi")
        await branch.wait_for_url(f"{console_url}/branch")
        await expect(branch.locator("body")).to_have_attribute("data-connection", "connected")
        branch_banner = branch.locator("#service-notice")
        await expect(branch_banner).to_be_hidden()

        own_redis_server.halt()
        await expect(banner).to_be_visible(timeout=10_000)
        await expect(banner).to_contain_text(BANNER)
        await expect(page.locator("body")).to_have_attribute("data-service", "degraded")
        # The page keeps its own node's connection: still signed in and taking calls.
        await expect(page.locator("body")).to_have_attribute("data-connection", "connected")
        await expect(page.locator("body")).to_have_attribute("data-state", "available")
        await page.screenshot(path=str(artifacts / "console-redis-away.png"))
        await expect(branch_banner).to_be_visible()
        await expect(branch_banner).to_contain_text(BANNER)

        own_redis_server.start()
        await expect(banner).to_be_hidden(timeout=10_000)
        await expect(page.locator("body")).to_have_attribute("data-service", "ok")
        await expect(page.locator("#notice")).to_contain_text("回復しました")
        await expect(branch_banner).to_be_hidden()
        # Going away works again: the leader answers.
        await page.locator("#toggle-available").click()
        await expect(page.locator("body")).to_have_attribute("data-state", "away")
        assert await page.evaluate("window.ekichika.lastError") is None
    finally:
        await branch_context.close()
        await context.close()
