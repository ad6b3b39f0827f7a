"""The booth's HTTP client of the HQ console's booth API (``/api/booth/...``).

Signed with HTTP Basic: the booth id and the booth's credential (the one it uses with
signaling). Errors become :class:`ConsoleUnavailable` with the console's error code, so that
callers can fall back or tell the resident; nothing personal is logged.
"""

from __future__ import annotations

import base64
import io
import logging

import aiohttp

log = logging.getLogger(__name__)


class ConsoleUnavailable(Exception):
    """The console could not be reached or refused the request (``code``: its error code,
    ``status``: the HTTP status, 0 when there was no answer)."""

    def __init__(self, message: str, *, code: str = "unreachable", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ConsoleClient:
    """One per booth agent; ``aclose()`` when done (idempotent)."""

    def __init__(self, base_url: str, booth_id: str, credential: str, *, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        pair = f"{booth_id}:{credential}".encode()
        self._headers = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=10)
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self._http

    async def upload_still(self, session_id: str, token: str, sealed: bytes) -> int:
        """Stream a sealed still into the console's still relay; the bytes it relayed."""
        url = f"{self.base_url}/api/booth/sessions/{session_id}/stills/relay/{token}"
        try:
            async with self._session().post(
                url,
                data=io.BytesIO(sealed),
                headers={"Content-Type": "application/octet-stream"},
                expect100=True,  # the body starts once the console has the staff download
            ) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    code = str(body.get("error", "error")) if isinstance(body, dict) else "error"
                    raise ConsoleUnavailable(
                        f"the console refused the still ({response.status} {code})",
                        code=code,
                        status=response.status,
                    )
                return int(body["bytes"])
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as err:
            raise ConsoleUnavailable(f"the console is unreachable: {err!r}") from err

    async def fetch_document(self, token: str, *, max_bytes: int) -> bytes:
        """Fetch a document HQ issued for this booth with its one-time token (``GET
        /api/booth/documents/{token}``). Never retried: a second request with the same
        token is refused by the console."""
        url = f"{self.base_url}/api/booth/documents/{token}"
        try:
            async with self._session().get(url) as response:
                if response.status != 200:
                    raise await _refused(response, "the document")
                if response.content_length is not None and response.content_length > max_bytes:
                    raise ConsoleUnavailable("the document is too large", code="too_large")
                parts: list[bytes] = []
                total = 0
                async for chunk in response.content.iter_chunked(256 * 1024):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ConsoleUnavailable("the document is too large", code="too_large")
                    parts.append(chunk)
                return b"".join(parts)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise ConsoleUnavailable(f"the console is unreachable: {err!r}") from err

    async def record_card_read(self, session_id: str, request_id: str) -> None:
        """Tell the console that this booth read a card for staff in ``session_id`` (the
        audit log's ``card_data_read``: identifiers only, the facts never leave the call)."""
        url = f"{self.base_url}/api/booth/sessions/{session_id}/card-reads"
        try:
            async with self._session().post(url, json={"request_id": request_id}) as response:
                if response.status != 201:
                    raise await _refused(response, "the card read record")
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise ConsoleUnavailable(f"the console is unreachable: {err!r}") from err

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


async def _refused(response: aiohttp.ClientResponse, what: str) -> ConsoleUnavailable:
    body = await response.json(content_type=None)
    code = str(body.get("error", "error")) if isinstance(body, dict) else "error"
    return ConsoleUnavailable(
        f"the console refused {what} ({response.status} {code})", code=code, status=response.status
    )
