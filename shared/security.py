"""Security helpers: staff tokens, booth credentials, staff passwords, TURN credentials.

* Staff tokens are issued by hq_console after login and checked by signaling. They are
  ``base64url(json claims) "." base64url(HMAC-SHA256(secret, claims))`` with an expiry;
  both services share ``token_secret``.
* Booth credentials are long random secrets; only their SHA-256 is stored. (A fast hash
  is right for high-entropy machine secrets; human passwords use Argon2id.)
* TURN REST credentials follow coturn's ``use-auth-secret`` scheme.
* Sealed stills: a document still crosses the console's relay encrypted with AES-256-GCM
  under a key used once, which only the two peers of the call know.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.errors import AuthError
from shared.protocol import ErrorCode, IceServer, StaffRole

_hasher = PasswordHasher()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class StaffClaims:
    staff_id: str
    role: StaffRole
    expires_at: float
    token_id: str


def issue_staff_token(
    secret: str, staff_id: str, role: StaffRole, ttl_s: float, *, now: float | None = None
) -> str:
    issued = time.time() if now is None else now
    claims = {
        "sub": staff_id,
        "role": role.value,
        "exp": issued + ttl_s,
        "iat": issued,
        "jti": secrets.token_hex(8),
    }
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    return f"{body}.{sig}"


def verify_staff_token(secret: str, token: str, *, now: float | None = None) -> StaffClaims:
    """Return the claims of a valid token; raise AuthError otherwise."""
    body, _, sig = token.partition(".")
    if not body or not sig:
        raise AuthError(ErrorCode.AUTH_FAILED, "staff token is malformed")
    expected = _b64(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, sig):
        raise AuthError(ErrorCode.AUTH_FAILED, "staff token signature is invalid")
    try:
        claims = json.loads(_unb64(body))
        result = StaffClaims(
            staff_id=str(claims["sub"]),
            role=StaffRole(claims["role"]),
            expires_at=float(claims["exp"]),
            token_id=str(claims["jti"]),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise AuthError(ErrorCode.AUTH_FAILED, "staff token is malformed") from err
    if result.expires_at <= (time.time() if now is None else now):
        raise AuthError(ErrorCode.TOKEN_EXPIRED, "staff token has expired; sign in again")
    return result


def new_booth_credential() -> str:
    return secrets.token_urlsafe(32)


def hash_booth_credential(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


def check_booth_credential(credential: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_booth_credential(credential), stored_hash)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(password: str, stored_hash: str) -> bool:
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def turn_rest_credentials(
    secret: str, user: str, ttl_s: int, *, now: float | None = None
) -> tuple[str, str]:
    """coturn ``use-auth-secret``: username ``"<expiry>:<user>"``, password HMAC-SHA1."""
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{user}"
    password = base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()
    return username, password


TurnTransport = Literal["udp", "tcp", "tls"]
TURN_TRANSPORTS: tuple[TurnTransport, ...] = ("udp", "tcp", "tls")

_TURN_URL = re.compile(
    r"(?P<scheme>turns?):(?P<host>\[[0-9a-fA-F:.]+\]|[^\[\]:?]+)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:\?transport=(?P<transport>udp|tcp))?"
)


@dataclass(frozen=True, slots=True)
class TurnUrl:
    """One TURN server address as WebRTC writes it (RFC 7065)."""

    host: str
    port: int
    transport: TurnTransport  # "tls": TURN over TLS over TCP (``turns:``)

    @property
    def url(self) -> str:
        if self.transport == "tls":
            return f"turns:{self.host}:{self.port}?transport=tcp"
        return f"turn:{self.host}:{self.port}?transport={self.transport}"


def parse_turn_url(url: str) -> TurnUrl:
    """``turn:host[:port][?transport=udp|tcp]`` or ``turns:host[:port][?transport=tcp]``.

    Without a port, 3478 (``turn:``) or 5349 (``turns:``); without a transport, UDP for
    ``turn:``. Raises ValueError for anything else (``turns:`` over UDP is DTLS, which
    no client of this system speaks)."""
    match = _TURN_URL.fullmatch(url)
    if match is None:
        raise ValueError(f"not a TURN URL: {url!r}")
    secure = match["scheme"] == "turns"
    port = int(match["port"]) if match["port"] else (5349 if secure else 3478)
    if not 0 < port < 65536:
        raise ValueError(f"bad port in TURN URL {url!r}")
    if secure:
        if match["transport"] not in (None, "tcp"):
            raise ValueError(f"turns: works over TCP only: {url!r}")
        return TurnUrl(match["host"], port, "tls")
    transport: TurnTransport = "tcp" if match["transport"] == "tcp" else "udp"
    return TurnUrl(match["host"], port, transport)


def turn_urls(
    host: str, *, port: int = 3478, tls_port: int | None = 443, udp: bool = True, tcp: bool = True
) -> list[str]:
    """The TURN URLs of one coturn server, most efficient first: UDP, TCP, then TLS on
    ``tls_port`` (``None``: no TLS listener). Put them in ``SignalingConfig.turn_urls``."""
    urls = []
    if udp:
        urls.append(TurnUrl(host, port, "udp").url)
    if tcp:
        urls.append(TurnUrl(host, port, "tcp").url)
    if tls_port is not None:
        urls.append(TurnUrl(host, tls_port, "tls").url)
    return urls


def ice_servers_for(
    stun_urls: list[str], turn_urls: list[str], turn_secret: str | None, user: str, ttl_s: int
) -> list[IceServer]:
    """The ICE servers handed to both peers of a call (empty: host candidates only).

    The TURN URLs share one time-limited credential (:func:`turn_rest_credentials`): valid
    for ``ttl_s`` seconds on every listener of the coturn servers with ``turn_secret``."""
    servers: list[IceServer] = []
    if stun_urls:
        servers.append(IceServer(urls=stun_urls))
    if turn_urls and turn_secret:
        username, password = turn_rest_credentials(turn_secret, user, ttl_s)
        servers.append(IceServer(urls=turn_urls, username=username, credential=password))
    return servers


@dataclass(frozen=True)
class SealedStill:
    """A still encrypted for the relay: ``ciphertext`` is the plaintext's size + 16 bytes."""

    ciphertext: bytes
    key: bytes  # 32 bytes
    nonce: bytes  # 12 bytes

    @property
    def key_b64(self) -> str:
        return _b64(self.key)

    @property
    def nonce_b64(self) -> str:
        return _b64(self.nonce)


SEAL_TAG_BYTES = 16


def seal_still(data: bytes) -> SealedStill:
    """Encrypt ``data`` under a fresh AES-256-GCM key (never reuse it for anything else)."""
    key = AESGCM.generate_key(bit_length=256)
    nonce = secrets.token_bytes(12)
    return SealedStill(AESGCM(key).encrypt(nonce, data, None), key, nonce)


def open_still(ciphertext: bytes, key_b64: str, nonce_b64: str) -> bytes:
    """Decrypt a sealed still; AuthError when the key, the nonce or a byte is wrong."""
    try:
        key, nonce = _unb64(key_b64), _unb64(nonce_b64)
        return AESGCM(key).decrypt(nonce, ciphertext, None)
    except (InvalidTag, ValueError) as err:
        raise AuthError(ErrorCode.AUTH_FAILED, "the still does not open with its key") from err
