"""The public verification page (no sign-in) and the issuance service's place in the
console app.

Routes (registered by :func:`setup_issuance`)
  GET /verify                  a form to type a verification code (?code=… → /verify/{code})
  GET /verify/{code}           有効 / 失効 / 該当なし with kind, document number, issue date
                               and issuing office; lookups are throttled per source address
  GET /verify/assets/verify.css
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final
from urllib.parse import quote

from aiohttp import web

from hq_console.issuance import pages
from hq_console.issuance.codes import canonical, grouped
from hq_console.issuance.service import IssuanceService

log = logging.getLogger(__name__)

CSS_PATH: Final = Path(__file__).resolve().parent / "verify.css"


class LookupThrottle:
    """At most ``max_lookups`` verification lookups per source within ``window_s``
    seconds (against guessing codes). A source is an IPv4 address or an IPv6 /64. Kept in
    memory, bounded: one console process per deployment."""

    def __init__(self, max_lookups: int, window_s: float, max_tracked: int = 10_000) -> None:
        self._max = max_lookups
        self._window = window_s
        self._max_tracked = max_tracked
        self._seen: dict[str, deque[float]] = {}

    @staticmethod
    def source(address: str | None) -> str:
        if not address:
            return "unknown"
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)

    def allow(self, address: str | None, *, now: float | None = None) -> bool:
        """Count a lookup from ``address``; False if it is over the limit (not counted)."""
        at = time.monotonic() if now is None else now
        key = self.source(address)
        seen = self._seen.get(key)
        if seen is not None:
            while seen and seen[0] <= at - self._window:
                seen.popleft()
            if len(seen) >= self._max:
                return False
        else:
            if len(self._seen) >= self._max_tracked:
                oldest = min(self._seen, key=lambda k: self._seen[k][-1] if self._seen[k] else 0)
                del self._seen[oldest]
            seen = self._seen[key] = deque(maxlen=self._max)
        seen.append(at)
        return True


ISSUANCE: Final = web.AppKey("issuance", IssuanceService)
VERIFY_THROTTLE: Final = web.AppKey("verify_throttle", LookupThrottle)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        content_type="text/html",
        text=text,
        headers={"X-Robots-Tag": "noindex", "Referrer-Policy": "no-referrer"},
    )


async def verify_form(request: web.Request) -> web.StreamResponse:
    typed = request.query.get("code", "").strip()
    if typed:
        code = canonical(typed)
        target = grouped(code) if code is not None else quote(typed[:40], safe="")
        raise web.HTTPSeeOther(f"/verify/{target}")
    service = request.app[ISSUANCE]
    return _html(pages.verify_form_page(service.settings.issuer.city_name))


async def verify_result(request: web.Request) -> web.StreamResponse:
    if not request.app[VERIFY_THROTTLE].allow(request.remote):
        log.warning("verification lookups throttled for a source")
        return _html(pages.throttled_page(), status=429)
    typed = request.match_info["code"][:40]
    result = await request.app[ISSUANCE].verify_code(typed)
    code = canonical(typed)
    shown = grouped(code) if code is not None else typed
    log.info("verification lookup: %s", result.verdict.value)
    return _html(pages.verify_result_page(result, shown))


async def verify_css(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(CSS_PATH, headers={"Content-Type": "text/css"})


async def _issuance_ctx(app: web.Application) -> AsyncIterator[None]:
    # Imported here: hq_console.app imports this package to call setup_issuance.
    from hq_console.app import CONFIG, SESSIONS

    config = app[CONFIG]
    service = IssuanceService.from_config(config, app[SESSIONS])
    app[ISSUANCE] = service
    if not service.can_issue:
        log.info("no issuing key configured: certificates cannot be issued")
    try:
        yield
    finally:
        await service.aclose()


def setup_issuance(app: web.Application) -> None:
    """Add issuance to the console app: the service (``app[ISSUANCE]``, built after the
    database), the public verification routes, the staff API and the booth's document fetch
    (hq_console.issuance.api). Call once from ``create_app``."""
    from hq_console.app import CONFIG

    config = app[CONFIG]
    app[VERIFY_THROTTLE] = LookupThrottle(config.verify_max_lookups, config.verify_window_s)
    app.cleanup_ctx.append(_issuance_ctx)
    app.router.add_get("/verify", verify_form)
    app.router.add_get("/verify/assets/verify.css", verify_css)
    app.router.add_get("/verify/{code}", verify_result)
    # The staff API and the booth's document fetch (imported here: it uses hq_console.app).
    from hq_console.issuance.api import setup_issuance_api

    setup_issuance_api(app)
