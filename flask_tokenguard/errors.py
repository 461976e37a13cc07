"""The exceptions flask-tokenguard raises.

Every error derives from :class:`TokenGuardError`. Refresh failures carry the outcome class
of PROBLEM.md (definitive, transient, configuration, ambiguous) so callers and other processes
can act on them the same way. No error ever carries a token value.
"""

from __future__ import annotations

from typing import Any


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


class RefreshError(TokenGuardError):
    """A refresh did not produce a new token.

    ``outcome`` is one of ``definitive``, ``transient``, ``configuration``, ``ambiguous`` or
    ``timeout``; ``retry_after`` is set for the outcomes a later request may retry.
    """

    outcome = "ambiguous"
    #: HTTP status the decorator answers with when this failure ends a request.
    http_status = 503

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
            "outcome": self.outcome,
            "message": self.message,
            "status": self.status,
            "error": self.error,
            "retry_after": self.retry_after,
        }

    @staticmethod
    def from_record(record: dict[str, Any]) -> RefreshError:
        cls = _OUTCOMES.get(str(record.get("outcome")), RefreshAmbiguous)
        status = record.get("status")
        retry_after = record.get("retry_after")
        return cls(
            str(record.get("message") or cls.outcome),
            status=status if isinstance(status, int) else None,
            error=str(record["error"]) if record.get("error") else None,
            retry_after=float(retry_after) if isinstance(retry_after, (int, float)) else None,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, error={self.error!r})"
        )


class RefreshDefinitive(RefreshError):
    """The provider answered ``invalid_grant``: the refresh token is dead; sign-in is needed."""

    outcome = "definitive"
    http_status = 401


class RefreshTransient(RefreshError):
    """The provider was not reached, or refused without consuming the token (429, 500, 503)."""

    outcome = "transient"


class ProviderConfigurationError(RefreshError):
    """The provider refused with an OAuth error other than ``invalid_grant``.

    Nothing was rotated, but retrying will not help until the configuration is fixed.
    """

    outcome = "configuration"


class RefreshAmbiguous(RefreshError):
    """The request may have reached the provider and no complete answer came back.

    The refresh token may have been rotated, so it is never presented again.
    """

    outcome = "ambiguous"
    http_status = 401


class RefreshTimeout(RefreshError):
    """This request's deadline passed while it waited for a refresh (its own or another's)."""

    outcome = "timeout"


_OUTCOMES: dict[str, type[RefreshError]] = {
    cls.outcome: cls
    for cls in (
        RefreshDefinitive,
        RefreshTransient,
        ProviderConfigurationError,
        RefreshAmbiguous,
        RefreshTimeout,
    )
}


class LoginError(TokenGuardError):
    """The authorization-code callback failed (bad state, provider error, no token)."""
