"""Sealing: tokens are encrypted (AES-256-GCM) wherever they rest - session and shared store.

Keys are derived with HKDF-SHA256 from ``TOKENGUARD_SECRET`` (by default from Flask's
``SECRET_KEY``), one per purpose label, so the session key never opens a store entry.
Each blob names the key it was sealed under (a 4-byte key id), so fallbacks from a secret
rotation cost nothing until they are needed. Associated data binds a blob to where it
belongs (the store key name, the session's record), so a blob moved elsewhere does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import TokenGuardError

_PREFIX = "tg1."
_NONCE = 12
_KID = 4


class SealError(TokenGuardError):
    """A blob did not open: tampered, moved, or sealed under a key no longer configured."""


def _bytes(secret: str | bytes) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def derive_key(secret: str | bytes, purpose: str) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"flask-tokenguard/v1/" + purpose.encode("ascii"),
    ).derive(_bytes(secret))


class Sealer:
    """Seals and opens bytes under the current key; opens with any fallback key too."""

    def __init__(self, secrets: Iterable[str | bytes], purpose: str) -> None:
        keys = [derive_key(s, purpose) for s in secrets if s]
        if not keys:
            raise ValueError("a Sealer needs at least one secret")
        self._current_kid = self._kid(keys[0])
        self._aeads = {self._kid(k): AESGCM(k) for k in reversed(keys)}
        self.purpose = purpose

    @staticmethod
    def _kid(key: bytes) -> bytes:
        return hashlib.sha256(b"kid" + key).digest()[:_KID]

    def seal(self, plaintext: bytes, aad: bytes) -> str:
        nonce = os.urandom(_NONCE)
        body = self._aeads[self._current_kid].encrypt(nonce, plaintext, aad)
        raw = self._current_kid + nonce + body
        return _PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def open(self, blob: str, aad: bytes) -> tuple[bytes, bool]:
        """The plaintext, and whether it was sealed under the current key (else: reseal it)."""
        if not isinstance(blob, str) or not blob.startswith(_PREFIX):
            raise SealError("not a sealed blob")
        text = blob[len(_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        except (binascii.Error, ValueError):
            raise SealError("sealed blob is not base64") from None
        if len(raw) < _KID + _NONCE + 16:
            raise SealError("sealed blob is truncated")
        kid, nonce, body = raw[:_KID], raw[_KID : _KID + _NONCE], raw[_KID + _NONCE :]
        aead = self._aeads.get(kid)
        if aead is None:
            raise SealError("sealed under a key that is not configured")
        try:
            return aead.decrypt(nonce, body, aad), kid == self._current_kid
        except InvalidTag:
            raise SealError("sealed blob does not open (tampered or moved)") from None
