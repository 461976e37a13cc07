"""Store key names and single-flight keys, derived without ever exposing a token.

A name is a SHA-256 digest over a purpose label and the length-prefixed client id and
refresh token. A refresh token is a high-entropy secret, so its digest reveals nothing;
no other secret goes in, so every host computes the same name through a secret rotation.
"""

from __future__ import annotations

import hashlib


def digest(purpose: str, *parts: str) -> str:
    """Hex SHA-256 over ``purpose`` and ``parts``, each length-prefixed (no ambiguity on joins)."""
    h = hashlib.sha256()
    for item in (purpose, *parts):
        raw = item.encode("utf-8")
        h.update(len(raw).to_bytes(8, "big"))
        h.update(raw)
    return h.hexdigest()


class KeyNames:
    """The store key names for one client: ``<prefix>:<purpose>:<digest>``."""

    def __init__(self, client_id: str, prefix: str = "tokenguard") -> None:
        self.client_id = client_id
        self.prefix = prefix

    def flight(self, refresh_token: str) -> str:
        """Key of the in-process single flight for this refresh token."""
        return digest("flight", self.client_id, refresh_token)

    def claim(self, refresh_token: str) -> str:
        return f"{self.prefix}:claim:{digest('claim', self.client_id, refresh_token)}"

    def result(self, refresh_token: str) -> str:
        """Where the outcome of refreshing this token is published (success or failure)."""
        return f"{self.prefix}:result:{digest('result', self.client_id, refresh_token)}"

    def revoked(self, refresh_token: str) -> str:
        """A logout's tombstone: a refresh that finishes later cannot bring the token back."""
        return f"{self.prefix}:revoked:{digest('revoked', self.client_id, refresh_token)}"

    def app_token(self, scope: str) -> str:
        """Where the app's own (client-credentials) token for ``scope`` is kept, sealed."""
        return f"{self.prefix}:apptoken:{digest('apptoken', self.client_id, scope)}"

    def app_grant(self, scope: str, seen: str) -> str:
        """The flight of fetching the app's token for ``scope`` after ``seen`` (an access
        token, or "" when none is known): everyone who saw the same token shares one fetch."""
        return digest("client_credentials", self.client_id, scope, seen)

    def fingerprint(self, refresh_token: str) -> str:
        """A short, stable, non-secret label for logs and for the session's lost-update guard."""
        return digest("fingerprint", self.client_id, refresh_token)[:16]

    def ticket(self, ticket_id: str) -> str:
        """Where a session's token record lives when tokens are kept in the store."""
        return f"{self.prefix}:ticket:{digest('ticket', self.client_id, ticket_id)}"

    def grant(self, record_key: str) -> str:
        """The durable grant id of a session's token record (48 hex digits): the record and
        its row in the grant store find each other without any index."""
        return digest("grant", self.client_id, record_key)[:48]

    def subject(self, subject: str) -> str:
        """The index of a subject's token records (for signing out everywhere)."""
        return f"{self.prefix}:subject:{digest('subject', self.client_id, subject)}"

    def provider_session(self, sid: str) -> str:
        """The index of the token records of one session at the provider (its ``sid``)."""
        return f"{self.prefix}:sid:{digest('sid', self.client_id, sid)}"

    def logout_token(self, jti: str) -> str:
        """A back-channel logout token already used (replays are refused)."""
        return f"{self.prefix}:jti:{digest('jti', self.client_id, jti)}"
