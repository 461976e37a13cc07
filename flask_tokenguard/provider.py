"""Calls to the token endpoint, and the classification of a refresh's failures.

A token request is one form POST (RFC 6749, section 3.2) made here with ``requests``, so the
real HTTP status is seen (requests-oauthlib hides it: a 403 ``invalid_grant`` surfaces as 400,
an HTML 503 page as ``MissingTokenError``) and redirects are never followed: a 3xx would send
the client secret and the refresh token on to wherever it points. Every failure falls in one
of the classes of "Outcome classes" in docs/design.md:

* definitive - ``invalid_grant`` with 400/401/403: the token is dead;
* transient - the provider was not reached, or answered 429/500/503 completely;
* configuration - any other complete OAuth error (``invalid_client``, ...);
* ambiguous - everything else (a 3xx included), because the provider may have rotated the token.

Each request uses a fresh connection: a pooled keep-alive connection the server closed
while idle fails like a drop after sending, which would turn a harmless retry into an
ambiguous outcome.
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
import urllib3.exceptions

from .errors import (
    ConfigurationError,
    InvalidGrant,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RefreshError,
    TokenError,
)
from .token import Token, accept

log = logging.getLogger("flask_tokenguard")

_DEFINITIVE_STATUSES = (400, 401, 403)
_TRANSIENT_STATUSES = (429, 500, 503)


@dataclass(frozen=True)
class ClientCredentials:
    """How this app authenticates at the token endpoint."""

    client_id: str
    client_secret: str | None = field(repr=False)
    method: str = "client_secret_basic"

    def auth(self) -> tuple[str, str] | None:
        """HTTP Basic credentials, each form-urlencoded first (RFC 6749, section 2.3.1)."""
        if self.method == "client_secret_basic" and self.client_secret is not None:
            return (quote(self.client_id, safe=""), quote(self.client_secret, safe=""))
        return None

    def body(self) -> dict[str, str]:
        if self.method == "client_secret_post" and self.client_secret is not None:
            return {"client_id": self.client_id, "client_secret": self.client_secret}
        if self.method == "none":
            return {"client_id": self.client_id}
        return {}


def retry_after(response: requests.Response, default: float) -> float:
    """Seconds from a ``Retry-After`` header (delta or HTTP date), else ``default``."""
    value = response.headers.get("Retry-After")
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _oauth_error(response: requests.Response) -> str | None:
    try:
        body = json.loads(response.text)
    except (ValueError, RecursionError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) and error else None


def classify_response(
    response: requests.Response,
    *,
    previous_refresh_token: str,
    default_retry_after: float,
    sent_at: float | None = None,
) -> Token:
    """The new token from a complete response, or the classified :class:`RefreshError`.

    ``sent_at``: when the request left (epoch seconds); the expiry counts from there.
    """
    status = response.status_code
    if 200 <= status < 300:
        try:
            body = json.loads(response.text)
            return accept(body, received_at=sent_at, previous_refresh_token=previous_refresh_token)
        except (ValueError, TokenError, RecursionError) as exc:
            # The provider may well have rotated the token: we cannot read the successor.
            raise OutcomeUnknown(
                f"token endpoint answered {status} without a usable token ({exc})", status=status
            ) from None
    error = _oauth_error(response)
    if status in _TRANSIENT_STATUSES:
        raise ProviderUnavailable(
            f"token endpoint answered {status}",
            status=status,
            error=error,
            retry_after=retry_after(response, default_retry_after),
        )
    if error == "invalid_grant" and status in _DEFINITIVE_STATUSES:
        raise InvalidGrant(
            "the refresh token was refused (invalid_grant)", status=status, error=error
        )
    if error == "temporarily_unavailable" and 400 <= status < 500:
        raise ProviderUnavailable(
            f"token endpoint answered {status} temporarily_unavailable",
            status=status,
            error=error,
            retry_after=retry_after(response, default_retry_after),
        )
    if error is not None and 400 <= status < 500 and error != "server_error":
        raise ProviderError(
            f"token endpoint refused the refresh: {error} ({status})", status=status, error=error
        )
    raise OutcomeUnknown(f"token endpoint answered {status} without a token", status=status)


def _reached(exc: BaseException) -> bool:
    """Whether the request may have reached the provider before ``exc`` (conservative: True)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(
            cur, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)
        ):
            return False
        if isinstance(cur, urllib3.exceptions.MaxRetryError):
            stack.append(cur.reason)
        stack.extend(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException))
        stack.append(cur.__cause__)
        stack.append(cur.__context__)
    return True


def classify_exception(exc: BaseException) -> RefreshError:
    """Map an exception raised while calling the token endpoint to an outcome."""
    if isinstance(exc, RefreshError):
        return exc
    if isinstance(exc, requests.ConnectTimeout):
        return ProviderUnavailable("token endpoint did not accept a connection in time")
    if isinstance(exc, requests.exceptions.SSLError):
        return ProviderUnavailable("TLS handshake with the token endpoint failed")
    if isinstance(exc, requests.ConnectionError) and not _reached(exc):
        return ProviderUnavailable("token endpoint could not be reached")
    if isinstance(exc, requests.ReadTimeout):
        return OutcomeUnknown("token endpoint did not answer in time")
    if isinstance(exc, requests.RequestException):
        return OutcomeUnknown(
            f"connection to the token endpoint failed after sending ({type(exc).__name__})"
        )
    return OutcomeUnknown(f"refresh failed unexpectedly ({type(exc).__name__})")


def post_token_request(
    token_url: str,
    form: dict[str, str],
    credentials: ClientCredentials,
    *,
    timeout: float,
    connect_timeout: float = 5.0,
) -> requests.Response:
    """One POST to the token endpoint on a fresh connection; redirects are not followed.

    ``timeout`` bounds each read, not the whole call: callers that need a total deadline run
    this in a thread they stop waiting for.
    """
    body = {**form, **credentials.body()}
    with requests.Session() as http:
        return http.post(
            token_url,
            data=body,
            auth=credentials.auth(),
            headers={"Accept": "application/json"},
            timeout=(min(connect_timeout, timeout), timeout),
            allow_redirects=False,
        )


class RefreshClient:
    """Calls the token endpoint with a refresh token; raises a classified :class:`RefreshError`."""

    def __init__(
        self,
        token_url: str | Callable[[], str],
        credentials: ClientCredentials,
        *,
        default_retry_after: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.token_url = token_url
        self.credentials = credentials
        self.default_retry_after = default_retry_after
        self.connect_timeout = connect_timeout

    def refresh(self, refresh_token: str, timeout: float) -> Token:
        """One refresh, each read bounded by ``timeout``; the caller bounds the whole call."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        return self._request(form, timeout, previous_refresh_token=refresh_token)

    def client_credentials(self, scope: str | None, timeout: float) -> Token:
        """A token for the app itself (RFC 6749, section 4.4), classified like a refresh."""
        form = {"grant_type": "client_credentials"}
        if scope:
            form["scope"] = scope
        return self._request(form, timeout, previous_refresh_token="")

    def _request(
        self, form: dict[str, str], timeout: float, *, previous_refresh_token: str
    ) -> Token:
        try:
            # A callable resolves the endpoint from the provider's metadata (no I/O once known).
            token_url = self.token_url() if callable(self.token_url) else self.token_url
        except ConfigurationError as exc:
            log.error("%s", exc)
            raise ProviderUnavailable("the token endpoint is not known yet") from None
        sent_at = time.time()
        try:
            response = post_token_request(
                token_url,
                form,
                self.credentials,
                timeout=timeout,
                connect_timeout=self.connect_timeout,
            )
        except Exception as exc:  # every failure is classified
            raise classify_exception(exc) from None
        return classify_response(
            response,
            previous_refresh_token=previous_refresh_token,
            default_retry_after=self.default_retry_after,
            sent_at=sent_at,
        )


def revoke_tokens(
    revocation_url: str,
    tokens: list[tuple[str, str]],
    credentials: ClientCredentials,
    *,
    timeout: float,
) -> bool:
    """RFC 7009: revoke each ``(token, token_type_hint)`` in order, all within ``timeout``.

    Runs in a helper thread so the whole call has a deadline. A failure is logged (never a token)
    and reported as False; the caller signs out locally anyway.
    """
    outcome: list[bool] = []

    def run() -> None:
        ok = True
        for value, hint in tokens:
            try:
                reply = post_token_request(
                    revocation_url,
                    {"token": value, "token_type_hint": hint},
                    credentials,
                    timeout=timeout,
                )
            except Exception as exc:  # logged and reported; never raised into a logout
                log.warning("revoking the %s at the provider failed (%s)", hint, type(exc).__name__)
                ok = False
                continue
            if reply.status_code != 200:
                log.warning(
                    "revoking the %s at the provider failed: it answered %s",
                    hint,
                    reply.status_code,
                )
                ok = False
        outcome.append(ok)

    worker = threading.Thread(target=run, name="tokenguard-revoke", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.warning("revoking the tokens at the provider took longer than %gs; gave up", timeout)
        return False
    return bool(outcome and outcome[0])


def get_document(
    url: str, *, timeout: float, max_bytes: int, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """GET a JSON document of the provider's: its status and at most ``max_bytes + 1`` bytes.

    No redirect is followed; raises ``requests.RequestException`` or ``OSError``.
    """
    with requests.Session() as http:
        reply = http.get(
            url,
            headers={"Accept": "application/json", **(headers or {})},
            timeout=(min(5.0, timeout), timeout),
            allow_redirects=False,
            stream=True,
        )
        return reply.status_code, reply.raw.read(max_bytes + 1, decode_content=True)


#: The longest userinfo answer read.
MAX_USERINFO_BYTES = 256 * 1024


def fetch_userinfo(userinfo_url: str, access_token: str, *, timeout: float) -> dict[str, Any]:
    """The userinfo endpoint's JSON object for ``access_token``; raises ``ValueError`` or
    ``requests.RequestException`` (the caller logs and goes on without it)."""
    status, raw = get_document(
        userinfo_url,
        timeout=timeout,
        max_bytes=MAX_USERINFO_BYTES,
        headers={"Authorization": f"Bearer {access_token}"},
    )
    if status != 200 or len(raw) > MAX_USERINFO_BYTES:
        raise ValueError(f"the userinfo endpoint answered {status}")
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise ValueError("the userinfo endpoint did not answer a JSON object")
    return body
