"""Configuration models, loaded once in each entry point and passed down.

Each app reads a TOML file (``--config PATH``) and environment variables with its own
prefix (``EKICHIKA_SIGNALING_``, ``EKICHIKA_CONSOLE_``, ``EKICHIKA_BOOTH_``); the
environment wins. Timing values are fields so that tests can shrink them.
"""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./var/ekichika.sqlite3"


class SignalingConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EKICHIKA_SIGNALING_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8765
    database_url: str = DEFAULT_DATABASE_URL
    token_secret: str = Field(min_length=16)
    # Origins allowed to open the staff WebSocket (the console's own origin). Empty: any.
    allowed_origins: list[str] = []
    heartbeat_s: float = 10.0  # WebSocket ping interval; no pong within it → dead
    hello_timeout_s: float = 5.0  # time to send hello after connecting
    max_message_bytes: int = 128 * 1024
    ring_timeout_s: float = 20.0
    max_missed_offers: int = 3  # missed in a row → the staff member is set to away
    decline_cooldown_s: float = 30.0  # a declined request is not re-offered to them sooner
    booth_reconnect_grace_s: float = 60.0  # a waiting request survives a booth drop this long
    staff_reconnect_grace_s: float = 20.0  # a call survives a staff-side drop this long
    # A wrap-up (後処理) cut short by a restart or a leader change is asked for again when
    # the staff member is back, if their last call ended at most this long ago.
    wrap_up_resume_s: float = Field(default=12 * 3600.0, ge=0)
    wait_estimate_samples: int = 20  # recent handle times per department
    wait_estimate_min_samples: int = 3  # fewer → the estimate is "unknown"
    # Queue fan-out (QueueStatus to booths, QueueSnapshot/BoothsSnapshot to staff) is
    # coalesced and flushed at most this often; offers are always sent at once.
    queue_push_interval_s: float = 0.25
    queue_snapshot_max_entries: int = 100  # oldest N waiting requests in a QueueSnapshot
    stun_urls: list[str] = []
    turn_urls: list[str] = []
    turn_secret: str | None = None
    turn_ttl_s: int = 3600
    languages: list[str] = ["ja", "en"]
    auto_migrate: bool = True
    # This node in logs and metrics (several nodes can serve one city).
    node_id: str = Field(default_factory=socket.gethostname, min_length=1, max_length=64)
    # Limits (docs/architecture.md "Limits"). Messages per connection: a token bucket of
    # *_burst messages refilled at *_rate_per_s. Over it a message is refused
    # (error rate_limited, once); rate_limit_strikes more refusals before the bucket has
    # refilled completely close the connection (1008).
    booth_message_rate_per_s: float = 20.0
    booth_message_burst: int = 60
    staff_message_rate_per_s: float = 50.0
    staff_message_burst: int = 200
    rate_limit_strikes: int = 50
    # auth_failure_limit failed hellos (wrong booth credential, bad or expired staff token)
    # from one address within auth_failure_window_s of the first: its further attempts are
    # refused without checking until the window ends (HTTP 429, or close 4429). At most
    # auth_tracking_max_sources addresses (IPv6: /64 prefixes) are tracked.
    auth_failure_limit: int = 10
    auth_failure_window_s: float = 300.0
    auth_tracking_max_sources: int = 10_000
    # Reverse proxies whose X-Forwarded-For is believed (its last address is the client).
    trusted_proxies: list[str] = []
    # Frames queued for one connection and not yet written: over either cap the peer is
    # not reading and is closed (4408). Queue snapshots and queue status replace their
    # unsent predecessor, so they do not add up.
    send_queue_max_frames: int = 1000
    send_queue_max_bytes: int = 8 * 1024 * 1024
    # Monitoring: GET /metrics answers only these client addresses; /readyz waits this
    # long for the database.
    metrics_allowed_addresses: list[str] = ["127.0.0.1", "::1"]
    readiness_timeout_s: float = 2.0
    # Several nodes (docs/architecture.md "Several signaling nodes"): the Redis server they
    # share; database_url must then be PostgreSQL. "": one process, nothing shared.
    redis_url: str = ""
    cluster_key_prefix: str = "ekichika:signaling"  # of every Redis key and channel
    leader_retry_s: float = 0.5  # a node tries to take the free leadership this often
    # A node that has not renewed its presence key for this long is gone: the leader
    # treats its connections as lost.
    node_timeout_s: float = 5.0
    cluster_stream_max_events: int = 100_000  # the event stream is trimmed to about this


class ConsoleConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EKICHIKA_CONSOLE_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = DEFAULT_DATABASE_URL
    token_secret: str = Field(min_length=16)
    # WebSocket URL of signaling as the staff browser reaches it.
    signaling_url: str = "ws://127.0.0.1:8765/ws/staff"
    # Several signaling nodes: the staff page tries these in turn (the next one when a
    # connection fails or is lost). Empty: signaling_url only.
    signaling_urls: list[str] = []
    # Media of the staff browser only through the TURN servers signaling hands out with
    # each call (iceTransportPolicy "relay"): for staff PCs on a network that lets only
    # the TURN server through, or whose own addresses must not reach the booth.
    ice_relay_only: bool = False
    # Signaling tokens are short-lived; the page fetches a fresh one for each (re)connect,
    # so logging out also stops new signaling connections.
    token_ttl_s: float = 300
    session_ttl_s: float = 12 * 3600
    secure_cookies: bool = False  # set True behind HTTPS
    # A document still's two ends (booth upload, staff download) wait this long for each other.
    still_relay_wait_s: float = 20.0
    auto_migrate: bool = True
    # Certificate issuance (docs/issuance.md). The city's business systems: "simulated"
    # reads fictional residents from register_path ("": the packaged sample register).
    business_systems: Literal["simulated"] = "simulated"
    register_path: str = ""
    # Signing: PEM/DER files of the issuing key, its certificate and the chain up to the
    # root. Empty: certificates cannot be issued (verification still works).
    issuing_key_path: str = ""
    issuing_cert_path: str = ""
    issuing_chain_paths: list[str] = []
    # Printed on certificates: the verification URL is {public_base_url}/verify/{code}.
    public_base_url: str = "http://127.0.0.1:8080"
    city_name: str = "多摩市"
    issuer_title: str = "多摩市長"
    issuer_name: str = ""  # the mayor's name, printed after the title
    issuing_office: str = "多摩市役所 市民課"
    # Prints 見本 / SAMPLE on every certificate; turn off only with a real issuing key.
    certificate_sample_mark: bool = True
    certificate_fee_yen: dict[str, int] = {
        "resident_record": 300,
        "seal_registration": 300,
        "tax_income": 300,
    }
    # The public verification page: lookups per source address within the window.
    verify_max_lookups: int = 20
    verify_window_s: float = 600.0
    # Forms (docs/forms.md): a draft holds the resident's data until the application is
    # submitted; drafts left behind are deleted this long after their call ended (and any
    # draft not saved for session_ttl_s), checked every form_draft_purge_interval_s.
    form_draft_retention_s: float = 1800.0
    form_draft_purge_interval_s: float = 300.0
    # Delivery of issued certificates to the booth: the one-time fetch token's lifetime.
    document_token_ttl_s: float = 120.0
    # Monitoring: GET /metrics answers only these client addresses (docs/architecture.md
    # "Monitoring"); /readyz waits this long for the database.
    metrics_allowed_addresses: list[str] = ["127.0.0.1", "::1"]
    readiness_timeout_s: float = 2.0


class DeviceConfig(BaseModel):
    """Which device implementation each role uses. ``simulated`` needs no hardware."""

    model_config = {"extra": "forbid"}

    camera: str = "simulated"  # or "v4l2:/dev/video0"
    microphone: str = "simulated"  # or "pulse:default", "alsa:hw:0"
    speaker: str = "null"  # or "pulse:default", "alsa:default"
    video_width: int = 640
    video_height: int = 480
    video_fps: int = 30
    tone_hz: float = 1000.0  # simulated microphone tone
    # The devices of a service point (see booth/devices/). "simulated" needs no hardware.
    card_reader: str = "simulated"  # or "pcsc" (first reader) / "pcsc:<reader name>"
    document_camera: str = "simulated"  # or "v4l2:/dev/videoN"
    # The document camera's live video (the second track of a call); stills are taken at the
    # camera's full resolution (the simulator: 3508x2480).
    document_width: int = 1280
    document_height: int = 720
    document_fps: int = 15
    receipt_printer: str = "simulated"  # or "network:HOST[:PORT]", "cups:QUEUE", "usb:VID:PID"
    a4_printer: str = "simulated"  # or "cups:QUEUE"
    spool_path: str = ""  # the durable print spool; "": var/spool-<booth id>.sqlite3


class BoothConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EKICHIKA_BOOTH_", env_nested_delimiter="__", extra="forbid"
    )

    booth_id: str
    credential: str = Field(min_length=8)
    server_url: str = "ws://127.0.0.1:8765/ws/booth"
    # Several signaling nodes: tried in turn, the next one when a connection fails or is
    # lost (a session in progress resumes on any node). Empty: server_url only.
    server_urls: list[str] = []
    # The HQ console as the booth reaches it (document stills go through its still relay;
    # "": stills go on the call's data channel only).
    console_url: str = ""
    console_timeout_s: float = 120.0  # one upload to the console, end to end
    # Root certificates of the city's issuing CA: certificates fetched from the console are
    # printed only if their PDF signature validates against one of them ([]: the SHA-256 is
    # checked, the signature is not).
    issuing_ca_paths: list[str] = []
    kiosk_host: str = "127.0.0.1"
    kiosk_port: int = 8081
    devices: DeviceConfig = DeviceConfig()
    default_language: Literal["ja", "en"] = "ja"
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 10.0
    connect_timeout_s: float = 2.0  # one attempt to reach signaling (TCP + TLS handshake)
    heartbeat_s: float = 10.0
    call_connect_timeout_s: float = 20.0  # WebRTC must connect within this
    # Recovery from drops: no media from staff for media_loss_grace_s (or the connection
    # failed) → a fresh peer connection is negotiated through signaling, in the same
    # session; each attempt waits media_restart_attempt_s for the answer and the connection.
    # Lost longer than media_outage_limit_s → the session ends (outcome media_failed).
    media_loss_grace_s: float = Field(default=2.0, gt=0)
    media_restart_attempt_s: float = Field(default=4.0, gt=0)
    media_outage_limit_s: float = Field(default=60.0, gt=0)
    ended_screen_s: float = 8.0  # "call ended" screen shows this long, then the start
    # Restrict WebRTC host candidates to these local addresses (empty: every interface
    # but loopback). Use it to keep media off a management interface.
    ice_host_addresses: list[str] = []
    # Behind a firewall that drops UDP: use the TURN server over "tcp" or "tls" (when
    # signaling offers it). relay_only: media only through TURN (the booth's addresses
    # never reach the other side).
    ice_turn_transport: Literal["tcp", "tls"] | None = None
    ice_relay_only: bool = False

    @property
    def signaling_urls(self) -> list[str]:
        """The signaling servers to try, in order."""
        return list(self.server_urls) or [self.server_url]


S = TypeVar("S", bound=BaseSettings)


def load_config(cls: type[S], path: str | Path | None = None, **overrides: Any) -> S:
    """Build ``cls`` from a TOML file (optional), the environment and ``overrides``.

    Precedence: overrides > environment > file > defaults.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError(f"config file {p} does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {p} is not valid TOML: {err}") from err

    # pydantic-settings gives init kwargs priority over the environment; to let the
    # environment win over the file, read the environment first and merge.
    class _EnvOnly(cls):  # type: ignore[valid-type, misc]
        model_config = SettingsConfigDict(**{**cls.model_config, "extra": "ignore"})

    env_values = {k: v for k, v in _env_values(_EnvOnly).items() if v is not None}
    merged = {**data, **env_values, **overrides}
    try:
        return cls(**merged)
    except ValidationError as err:
        raise ConfigError(f"invalid {cls.__name__}: {err}") from err


def _env_values(cls: type[BaseSettings]) -> dict[str, Any]:
    from pydantic_settings import EnvSettingsSource

    source = EnvSettingsSource(cls)
    return dict(source())
