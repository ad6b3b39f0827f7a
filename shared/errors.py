"""The project's error types. Lower-library exceptions are translated into these at the edge."""

from __future__ import annotations

from shared.protocol import ErrorCode


class EkichikaError(Exception):
    """Base of every error the project raises on purpose."""


class ConfigError(EkichikaError):
    """Configuration is missing or invalid; the message says which setting and how to fix it."""


class ProtocolError(EkichikaError):
    """A message broke the protocol. ``code`` is what the peer is told."""

    def __init__(
        self, code: ErrorCode, message: str, *, ref: str | None = None, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ref = ref
        self.fatal = fatal


class AuthError(ProtocolError):
    """Authentication failed (wrong booth credential, forged or expired staff token)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(code, message, ref="hello", fatal=True)


class DeviceError(EkichikaError):
    """A booth device failed. ``reason`` is short, human-readable and safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
