"""Errors of certificate issuance. Each carries a Japanese message staff can read as is
(and an English one for logs and the second line of the UI); neither holds personal data."""

from __future__ import annotations

from shared.errors import EkichikaError


class IssuanceError(EkichikaError):
    """A certificate could not be looked up, issued, revoked or verified."""

    def __init__(self, message: str, message_en: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.message_en = message_en


class RegisterError(IssuanceError):
    """The city's business systems (resident register, seal registration, tax) failed or
    hold no such record."""


class RegisterUnavailable(RegisterError):
    """The business systems cannot be reached or read now; trying again later may work."""


class SigningError(IssuanceError):
    """The issuing key or certificate is missing or unusable, or signing failed."""


class DocumentNotFound(IssuanceError):
    """No issued document has this id."""
