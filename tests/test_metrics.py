"""Prometheus metrics, readiness and the /metrics allow-lists of signaling, the HQ console
and the booth's kiosk app, scraped over HTTP from real servers."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from booth.agent import BoothAgent
from booth.kiosk.app import create_kiosk_app
from hq_console.app import create_app as create_console_app
from shared.config import BoothConfig, ConsoleConfig, DeviceConfig
from shared.protocol import (
    AcceptOffer,
    CallStarted,
    HangUp,
    Offer,
    QueueStatus,
    Relay,
    RequestHelp,
    SdpPayload,
    SessionEnded,
    SetState,
)
from shared.store.db import create_engine, migrate, session_factory
from shared.store.seed import seed_demo
from tests.signaling_app_support import running_signaling_app
from tests.signaling_support import connect_booth, connect_staff, eventually

BOOTH = "seiseki-1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(base_url: str, local_host: str = "127.0.0.1") -> Samples:
    connector = aiohttp.TCPConnector(local_addr=(local_host, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(base_url + "/metrics") as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def status_from(url: str, local_host: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(local_host, 0))
    async with aiohttp.ClientSession(connector=connector) as session, session.get(url) as resp:
        return resp.status


# ------------------------------------------------------------------ signaling


async def test_signaling_metrics_follow_a_call(tmp_path: Path) -> None:
    async with running_signaling_app(
        tmp_path, turn_urls=["turn:127.0.0.1:3478"], turn_secret="turn-secret-for-tests"
    ) as sig:
        ws_url, creds, token = (
            sig.running.ws_url,
            sig.running.booth_credentials,
            sig.running.staff_token,
        )
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]) as booth:
            async with connect_staff(ws_url, token("sato")) as staff:
                await booth.send(RequestHelp(request_id="r-m1", department="shimin", language="ja"))
                await booth.expect(QueueStatus)
                before = await scrape(sig.base_url)
                assert value(before, "ekichika_signaling_node_info", node_id="test-node") == 1
                assert value(before, "ekichika_signaling_booths_connected") == 1
                assert value(before, "ekichika_signaling_staff_connected", role="hq") == 1
                assert value(before, "ekichika_signaling_queue_length", department="shimin") == 1
                assert value(before, "ekichika_signaling_queue_length", department="hoken") == 0
                oldest = value(
                    before, "ekichika_signaling_queue_oldest_wait_seconds", department="shimin"
                )
                assert oldest is not None and 0 <= oldest < 5

                await staff.send(SetState(state="available"))
                offer = await staff.expect(Offer)
                await staff.send(AcceptOffer(offer_id=offer.offer_id))
                started = await booth.expect(CallStarted)
                assert started.ice_servers[0].username is not None  # a TURN credential
                await staff.expect(CallStarted)
                sdp = Relay(
                    session_id=started.session_id,
                    payload=SdpPayload(sdp_type="offer", sdp="v=0 metrics"),
                )
                await booth.send(sdp)
                assert await staff.expect(Relay) == sdp
                during = await scrape(sig.base_url)
                assert value(during, "ekichika_signaling_sessions_active") == 1
                assert value(during, "ekichika_signaling_queue_length", department="shimin") == 0

                await booth.send(HangUp(session_id=started.session_id))
                await booth.expect(SessionEnded)
                await staff.expect(SessionEnded)
                after = await scrape(sig.base_url)
            # The booth comes back: a reconnect (nothing to resume).
            await eventually(lambda: "sato" not in sig.server.staff)
        await eventually(lambda: not sig.server.booths)
        async with connect_booth(ws_url, BOOTH, creds[BOOTH]):
            again = await scrape(sig.base_url)

    m = "ekichika_signaling_match_latency_seconds"
    assert value(after, m + "_count", department="shimin") == 1
    latency = value(after, m + "_sum", department="shimin")
    assert latency is not None and 0 <= latency < 5
    assert value(after, m + "_bucket", department="shimin", le="+Inf") == 1
    assert value(after, "ekichika_signaling_sessions_total", outcome="hangup_booth") == 1
    assert value(after, "ekichika_signaling_requests_closed_total", status="matched") == 1
    assert value(after, "ekichika_signaling_relay_messages_total", kind="sdp") == 1
    assert value(after, "ekichika_signaling_turn_credentials_issued_total") == 1
    assert value(after, "ekichika_signaling_sessions_active") == 0
    assert value(after, "ekichika_signaling_connections_total", side="booth") == 1
    assert value(after, "ekichika_signaling_connections_total", side="staff") == 1
    assert (
        value(after, "ekichika_signaling_reconnects_total", side="booth", resumed="false") is None
    )
    assert value(again, "ekichika_signaling_reconnects_total", side="booth", resumed="false") == 1
    assert value(again, "ekichika_signaling_booths_connected") == 1
    assert value(again, "ekichika_signaling_staff_connected", role="hq") is None


async def test_signaling_readiness_follows_the_database(tmp_path: Path) -> None:
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    async with running_signaling_app(tmp_path, database_path=db_dir / "signaling.sqlite3") as sig:
        async with aiohttp.ClientSession() as session:
            async with session.get(sig.base_url + "/readyz") as resp:
                assert resp.status == 200
                assert await resp.json() == {"ready": True, "accepting": "ok", "database": "ok"}
            # The database goes away: its directory is removed and the pool is closed.
            shutil.rmtree(db_dir)
            await sig.server.store.aclose()
            async with session.get(sig.base_url + "/readyz") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert (body["ready"], body["database"]) == (False, "unreachable")
            # Liveness keeps its contract: the process answers.
            async with session.get(sig.base_url + "/healthz") as resp:
                assert resp.status == 200
                assert (await resp.json())["ok"] is True


async def test_signaling_metrics_only_for_allowed_addresses(tmp_path: Path) -> None:
    async with running_signaling_app(tmp_path) as sig:
        assert await status_from(sig.base_url + "/metrics", "127.0.0.2") == 403
        assert await status_from(sig.base_url + "/metrics", "127.0.0.1") == 200


# ------------------------------------------------------------------ HQ console

PASSWORD = "console-metrics-password"


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path}/console.sqlite3"
    await migrate(url)
    engine = create_engine(url)
    try:
        await seed_demo(session_factory(engine), {}, PASSWORD)
    finally:
        await engine.dispose()
    config = ConsoleConfig(
        database_url=url,
        token_secret="console-metrics-token-secret-0123",
        metrics_allowed_addresses=["127.0.0.1"],
    )
    runner = web.AppRunner(create_console_app(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_console_metrics_count_sign_ins_and_refuse_other_addresses(console: str) -> None:
    assert await status_from(console + "/metrics", "127.0.0.2") == 403
    async with aiohttp.ClientSession() as session:
        headers = {"Origin": console}
        for password, expected in ((PASSWORD, 303), ("wrong-password", 401)):
            async with session.post(
                console + "/login",
                data={"login": "sato", "password": password},
                headers=headers,
                allow_redirects=False,
            ) as resp:
                assert resp.status == expected
        async with session.get(console + "/readyz") as resp:
            assert resp.status == 200
            assert (await resp.json())["database"] == "ok"
    samples = await scrape(console)
    assert value(samples, "ekichika_console_logins_total", outcome="ok") == 1
    assert value(samples, "ekichika_console_logins_total", outcome="failed") == 1
    assert value(samples, "ekichika_console_still_relay_bytes_total") == 0
    # Database totals are there (nothing issued in a fresh database).
    assert ("ekichika_console_certificates_issued", "counter") in {
        (f.name, f.type) for f in _families(await _metrics_text(console))
    }


async def _metrics_text(base_url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(base_url + "/metrics") as resp:
        return await resp.text()


def _families(text: str) -> list[Metric]:
    return list(text_string_to_metric_families(text))


# ------------------------------------------------------------------ booth kiosk


async def test_booth_metrics_on_the_kiosk_port(tmp_path: Path) -> None:
    async with running_signaling_app(tmp_path) as sig:
        config = BoothConfig(
            booth_id=BOOTH,
            credential=sig.running.booth_credentials[BOOTH],
            server_url=f"{sig.running.ws_url}/ws/booth",
            devices=DeviceConfig(
                video_width=320,
                video_height=240,
                video_fps=10,
                spool_path=str(tmp_path / "spool.sqlite3"),
            ),
        )
        agent = BoothAgent(config)
        await agent.start()
        runner = web.AppRunner(create_kiosk_app(agent))
        await runner.setup()
        try:
            await agent.signaling.wait_connected()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            base = f"http://127.0.0.1:{runner.addresses[0][1]}"
            samples = await scrape(base)
            assert value(samples, "ekichika_booth_signaling_state", state="connected") == 1
            assert value(samples, "ekichika_booth_call_state", state="idle") == 1
            assert value(samples, "ekichika_booth_call_state", state="in_call") == 0
            assert value(samples, "ekichika_booth_print_spool_jobs", state="queued") == 0
            kinds = {
                dict(labels)["kind"]
                for name, labels in samples
                if name == "ekichika_booth_device_state"
            }
            assert {"card_reader", "receipt_printer"} <= kinds
        finally:
            await runner.cleanup()
            await agent.aclose()
