"""Verification codes printed on certificates.

16 characters of Crockford's base32 (0-9 and A-Z without I, L, O, U: 80 random bits),
printed in groups of four (``7K3Q-M9XD-2HRT-B4CE``). Reading is forgiving: case, spaces and
hyphens do not matter, and O/I/L typed by mistake count as 0/1/1. Only the code's SHA-256 is
stored, so the database alone cannot produce a valid code.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH: Final = 16
GROUP: Final = 4
_CONFUSABLE: Final = str.maketrans({"O": "0", "I": "1", "L": "1"})
_IGNORED: Final = frozenset(" -\u2010\u2011\u2012\u2013\u2014\u2212\u30fc\uff0d\u3000\t")


def new_code() -> str:
    """A fresh code, canonical form (16 characters, no hyphens)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def canonical(text: str) -> str | None:
    """The canonical form of a typed or scanned code, or None if it cannot be one."""
    if len(text) > 64:
        return None
    chars = [c for c in text.upper().translate(_CONFUSABLE) if c not in _IGNORED]
    # Full-width letters and digits typed with a Japanese input method.
    chars = [chr(ord(c) - 0xFEE0) if "\uff10" <= c <= "\uff3a" else c for c in chars]
    code = "".join(chars).translate(_CONFUSABLE)
    if len(code) != CODE_LENGTH or any(c not in ALPHABET for c in code):
        return None
    return code


def grouped(code: str) -> str:
    """``7K3QM9XD2HRTB4CE`` → ``7K3Q-M9XD-2HRT-B4CE``."""
    return "-".join(code[i : i + GROUP] for i in range(0, len(code), GROUP))


def code_digest(code: str) -> str:
    """SHA-256 (hex) of the canonical code: what the database stores."""
    return hashlib.sha256(code.encode("ascii")).hexdigest()
