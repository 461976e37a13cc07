"""Every failure class fans out to every waiting request.

docs/design.md, "Failure ways" (5. Ambiguous failure, 7. Error fan-out) and "Outcome classes".

Each test bursts one user's requests at the real provider with a fault armed, and checks
what every request got, what the session keeps, and how often the token was presented.
"""

from __future__ import annotations

import time

from .fixtures.apps import burst, new_client

N = 16
FAST = {
    "TOKENGUARD_PROVIDER_TIMEOUT": 1,
    "TOKENGUARD_CLAIM_TTL": 2,
    "TOKENGUARD_WAIT_TIMEOUT": 4,
}


def session_token(http, base):
    return http.get(f"{base}/_test/token", timeout=5).json()


def test_invalid_grant_gives_every_request_401_and_clears_the_session(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.revoke(token["refresh_token"])  # the family is dead at the provider
    provider.set_faults(refresh_delay=0.2)
    http = new_client(base, token)

    result = burst(http, f"{base}/api/profile", N)

    assert result.statuses == [401] * N
    assert provider.presentations(token["refresh_token"]) == 1
    assert session_token(http, base)["record"] is None
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 401
    assert provider.presentations(token["refresh_token"]) == 1


def test_invalid_grant_as_403_is_definitive_too(make_provider, guarded):
    strict = make_provider(invalid_grant_status=403)
    base = guarded(strict)
    token = strict.issue(expires_in=0)
    strict.revoke(token["refresh_token"])
    http = new_client(base, token)
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 401
    assert session_token(http, base)["record"] is None


def test_unavailable_before_processing_gives_503_keeps_the_token_and_heals(provider, guarded):
    base = guarded(TOKENGUARD_RETRY_AFTER=1)
    token = provider.issue(expires_in=0)
    provider.set_faults(unavailable_before=True, refresh_delay=0.2)
    http = new_client(base, token)

    result = burst(http, f"{base}/api/profile", N)

    assert result.statuses == [503] * N
    assert all(r.headers.get("Retry-After") for r in result.replies)
    assert all(r.json()["outcome"] == "transient" for r in result.replies)
    # One request reached the provider; the others learned the outcome from it.
    assert provider.stats()["refresh_requests"] == 1
    assert session_token(http, base)["refresh_token"] == token["refresh_token"]

    provider.clear_faults()
    time.sleep(2.1)  # the provider's Retry-After: 2
    result = burst(http, f"{base}/api/profile", N)
    assert result.statuses == [200] * N
    stats = provider.stats()
    assert stats["refreshes"] == 1
    assert stats["max_consume_attempts"] == 1


def test_a_transient_failure_while_the_access_token_is_valid_serves_the_request(provider, guarded):
    base = guarded(TOKENGUARD_LEEWAY=10)
    token = provider.issue(expires_in=8)  # inside the refresh window, still valid
    provider.set_faults(unavailable_before=True)
    http = new_client(base, token)
    result = burst(http, f"{base}/api/profile", 8)
    assert result.statuses == [200] * 8
    assert session_token(http, base)["refresh_token"] == token["refresh_token"]


def test_a_connection_dropped_after_commit_is_never_presented_again(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.set_faults(drop_after_commit=1, refresh_delay=0.2)
    http = new_client(base, token)

    result = burst(http, f"{base}/api/profile", N)

    # Ambiguous: the access token has expired, so sign-in is needed; nobody retried.
    assert result.statuses == [401] * N
    assert provider.presentations(token["refresh_token"]) == 1
    # A stale copy of the session carrying the same token does not present it either.
    stale = new_client(base, token)
    assert stale.get(f"{base}/api/profile", timeout=5).status_code == 401
    assert provider.presentations(token["refresh_token"]) == 1


def test_an_ambiguous_outcome_keeps_serving_a_valid_access_token(provider, guarded):
    base = guarded(TOKENGUARD_LEEWAY=10)
    token = provider.issue(expires_in=8)
    token["expires_in"] = 20  # issued 12 s ago: due now, 8 s before it expires
    provider.set_faults(drop_after_commit=1)
    http = new_client(base, token)
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    record = session_token(http, base)["record"]
    assert record["st"] == "ambiguous"
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 200
    assert provider.presentations(token["refresh_token"]) == 1


def test_a_hanging_provider_ends_every_request_within_the_bound(provider, guarded):
    base = guarded(**FAST)
    token = provider.issue(expires_in=0)
    provider.set_faults(hang=True, hang_seconds=30)
    http = new_client(base, token)

    started = time.monotonic()
    result = burst(http, f"{base}/api/profile", N)
    elapsed = time.monotonic() - started

    assert elapsed < FAST["TOKENGUARD_WAIT_TIMEOUT"] + 4  # the wait bound, not the 30 s hang
    assert result.statuses == [401] * N  # ambiguous and expired
    assert provider.presentations(token["refresh_token"]) == 1
    stale = new_client(base, token)
    assert stale.get(f"{base}/api/profile", timeout=10).status_code == 401
    assert provider.presentations(token["refresh_token"]) == 1


def test_a_reply_that_is_not_a_token_is_ambiguous(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.set_faults(garbage=1)
    http = new_client(base, token)
    reply = http.get(f"{base}/api/profile", timeout=5)
    assert reply.status_code == 401
    assert "ambiguous" in reply.json()["message"] or reply.json()["message"]
    assert provider.presentations(token["refresh_token"]) == 1


def test_invalid_client_is_a_configuration_failure_that_keeps_the_token(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.set_faults(invalid_client=True)
    http = new_client(base, token)
    reply = http.get(f"{base}/api/profile", timeout=5)
    assert reply.status_code == 503
    assert reply.json()["outcome"] == "configuration"
    assert session_token(http, base)["refresh_token"] == token["refresh_token"]


def test_a_gateway_error_after_consuming_is_ambiguous(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.set_faults(status=1, status_code=502, status_after_consume=True)
    http = new_client(base, token)
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 401
    assert http.get(f"{base}/api/profile", timeout=5).status_code == 401
    assert provider.presentations(token["refresh_token"]) == 1


def test_429_is_transient_with_the_providers_retry_after(provider, guarded):
    base = guarded()
    token = provider.issue(expires_in=0)
    provider.set_faults(
        status=1, status_code=429, status_retry_after=3, status_body={"error": "slow_down"}
    )
    http = new_client(base, token)
    reply = http.get(f"{base}/api/profile", timeout=5)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "3"
    assert session_token(http, base)["refresh_token"] == token["refresh_token"]


def test_an_unreachable_provider_is_transient(provider, guarded):
    from .fixtures.servers import free_port

    base = guarded(TOKENGUARD_TOKEN_URL=f"http://127.0.0.1:{free_port()}/token")
    token = provider.issue(expires_in=0)
    http = new_client(base, token)
    reply = http.get(f"{base}/api/profile", timeout=10)
    assert reply.status_code == 503
    assert reply.json()["outcome"] == "transient"
    assert session_token(http, base)["refresh_token"] == token["refresh_token"]


def test_token_refresh_failed_is_sent_once_per_failed_provider_call(provider, tmp_path):
    from flask_tokenguard import token_refresh_failed
    from flask_tokenguard.errors import InvalidGrant

    from .fixtures.apps import make_app
    from .fixtures.servers import serve

    app = make_app(provider, str(tmp_path))
    seen = []

    def receiver(sender, error):
        seen.append((sender, error))

    token_refresh_failed.connect(receiver, app)
    try:
        with serve(app) as base:
            token = provider.issue(expires_in=0)
            provider.revoke(token["refresh_token"])
            provider.set_faults(refresh_delay=0.2)
            http = new_client(base, token)
            assert burst(http, f"{base}/api/profile", 8).statuses == [401] * 8
    finally:
        token_refresh_failed.disconnect(receiver, app)
    assert len(seen) == 1
    assert seen[0][0] is app
    assert isinstance(seen[0][1], InvalidGrant)
