"""The exceptions flask-tokenguard raises, and the outcome of a refresh.

Every error derives from :class:`TokenGuardError`. A failed refresh is a :class:`RefreshError`
whose class names its outcome (see "Outcome classes" in docs/design.md), so callers and other
processes act on it the same way. No error ever carries a token value.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Outcome(str, Enum):
    """How a refresh ended; the value is what the shared store records."""

    #: the provider issued a new token
    OK = "ok"
    #: ``invalid_grant``: the refresh token is dead, sign-in is needed
    DEFINITIVE = "definitive"
    #: the provider was not reached, or refused without consuming the token
    TRANSIENT = "transient"
    #: the provider refused this client (``invalid_client``, ...); nothing was consumed
    CONFIGURATION = "configuration"
    #: the provider may have rotated the token; it is never presented again
    AMBIGUOUS = "ambiguous"
    #: this request's deadline passed while it waited
    TIMEOUT = "timeout"
    #: the user signed out; a refresh that finishes later must not bring the token back
    REVOKED = "revoked"


class TokenGuardError(Exception):
    """Base class of every error raised by flask-tokenguard."""


class ConfigurationError(TokenGuardError, ValueError):
    """The extension is misconfigured; the message names the offending key."""


class TokenError(TokenGuardError):
    """A token is malformed: in the session, or in a provider's reply."""


class StoreError(TokenGuardError):
    """The shared store failed."""


class StoreUnavailable(StoreError):
    """The shared store could not be reached (distinct from a claim held by someone else)."""


class LoginError(TokenGuardError):
    """The authorization-code callback failed (bad state, provider error, no token)."""


class IdTokenError(TokenGuardError):
    """An ID token failed validation (signature, algorithm, issuer, audience, expiry, nonce).

    At sign-in it becomes a :class:`LoginError`; on refresh an :class:`InvalidGrant`.
    """


class RefreshError(TokenGuardError):
    """A refresh did not produce a new token.

    ``outcome`` says which class of failure it is; ``retry_after`` is set for the outcomes a
    later request may retry. ``status`` and ``error`` are the provider's HTTP status and
    OAuth error code, for logs; the message sent to clients never includes them.
    """

    outcome = Outcome.AMBIGUOUS

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error = error
        self.retry_after = retry_after

    def to_record(self) -> dict[str, Any]:
        """A JSON-able description, published so other processes learn the same outcome."""
        return {
            "outcome": self.outcome.value,
            "message": self.message,
            "status": self.status,
            "error": self.error,
            "retry_after": self.retry_after,
        }

    @staticmethod
    def from_record(record: dict[str, Any]) -> RefreshError:
        cls = _BY_OUTCOME.get(str(record.get("outcome")), OutcomeUnknown)
        status = record.get("status")
        retry_after = record.get("retry_after")
        return cls(
            str(record.get("message") or cls.outcome.value),
            status=status if isinstance(status, int) else None,
            error=str(record["error"]) if record.get("error") else None,
            retry_after=float(retry_after) if isinstance(retry_after, (int, float)) else None,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, error={self.error!r})"
        )


class InvalidGrant(RefreshError):
    """The provider answered ``invalid_grant``: the refresh token is dead; sign-in is needed."""

    outcome = Outcome.DEFINITIVE


class ProviderUnavailable(RefreshError):
    """The provider was not reached, or refused without consuming the token (429, 500, 503)."""

    outcome = Outcome.TRANSIENT


class ProviderError(RefreshError):
    """The provider refused with an OAuth error other than ``invalid_grant``.

    Nothing was rotated, but retrying will not help until the client's settings are fixed.
    """

    outcome = Outcome.CONFIGURATION


class OutcomeUnknown(RefreshError):
    """The request may have reached the provider and no complete answer came back.

    The refresh token may have been rotated, so it is never presented again.
    """

    outcome = Outcome.AMBIGUOUS


class RefreshTimeout(RefreshError):
    """This request's deadline passed while it waited for a refresh (its own or another's)."""

    outcome = Outcome.TIMEOUT


_BY_OUTCOME: dict[str, type[RefreshError]] = {
    cls.outcome.value: cls
    for cls in (InvalidGrant, ProviderUnavailable, ProviderError, OutcomeUnknown, RefreshTimeout)
}
