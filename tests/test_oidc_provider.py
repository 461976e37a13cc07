"""The real OpenID Provider (node-oidc-provider) behaves as the extension's tests assume.

Everything goes over HTTP, as the extension will: discovery, the code flow with PKCE through the
development login and consent pages, refresh with rotation, reuse of a rotated refresh token,
revocation, introspection, userinfo, client credentials, and the server's presentation counter.
What the provider does on reuse is read from its source: see tests/oidc_provider/README.md.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from tests.fixtures.oidc_provider import (
    DEFAULT_REDIRECT_URI,
    OidcProvider,
    fingerprint,
    jwt_claims,
)
from tests.fixtures.servers import free_port, serve


def assert_invalid_grant(reply: requests.Response) -> None:
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"] == "invalid_grant"


def test_discovery_lists_the_endpoints(oidc_provider: OidcProvider) -> None:
    reply = requests.get(oidc_provider.discovery_url, timeout=10)
    assert reply.status_code == 200
    doc = reply.json()
    issuer = oidc_provider.issuer
    assert doc["issuer"] == issuer
    assert issuer.startswith("http://127.0.0.1:")
    for name in ("authorization", "token", "userinfo", "revocation", "introspection"):
        assert doc[f"{name}_endpoint"].startswith(issuer + "/"), name
    assert doc["end_session_endpoint"].startswith(issuer + "/")
    assert doc["jwks_uri"].startswith(issuer + "/")
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token", "client_credentials"} <= set(
        doc["grant_types_supported"]
    )
    assert {"openid", "profile", "email", "offline_access"} <= set(doc["scopes_supported"])
    assert {"client_secret_basic", "client_secret_post", "none"} <= set(
        doc["token_endpoint_auth_methods_supported"]
    )
    assert doc["backchannel_logout_supported"] is True


@pytest.mark.parametrize("public", [False, True], ids=["confidential", "public"])
def test_code_flow_with_pkce_and_offline_access_returns_three_tokens(
    oidc_provider: OidcProvider, public: bool
) -> None:
    request = oidc_provider.authorization_request(public=public)
    with requests.Session() as browser:
        callback = oidc_provider.login(browser, request.url, username="alice")
    assert callback.startswith(DEFAULT_REDIRECT_URI + "?")
    assert parse_qs(urlsplit(callback).query)["iss"] == [oidc_provider.issuer]

    reply = oidc_provider.exchange_code(request, callback)
    assert reply.status_code == 200, reply.text
    token = reply.json()
    assert {"access_token", "refresh_token", "id_token"} <= set(token)
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == oidc_provider.options.access_ttl
    assert set(token["scope"].split()) == {"openid", "profile", "email", "offline_access"}

    claims = jwt_claims(token["id_token"])
    assert claims["iss"] == oidc_provider.issuer
    assert claims["aud"] == request.client_id
    assert claims["sub"] == "alice"
    assert claims["nonce"] == request.nonce
    assert claims["exp"] - claims["iat"] == oidc_provider.options.access_ttl

    info = oidc_provider.userinfo(token["access_token"])
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == "alice"
    assert info.json()["email"] == "alice@example.test"

    # An authorization code is good once.
    assert_invalid_grant(oidc_provider.exchange_code(request, callback))


def test_pkce_is_required_for_the_confidential_client(oidc_provider: OidcProvider) -> None:
    url = urlsplit(oidc_provider.authorization_request().url)
    params = {
        name: values[0]
        for name, values in parse_qs(url.query).items()
        if name not in ("code_challenge", "code_challenge_method")
    }
    reply = requests.get(
        url._replace(query=urlencode(params)).geturl(), allow_redirects=False, timeout=10
    )
    assert reply.is_redirect
    query = parse_qs(urlsplit(reply.headers["Location"]).query)
    assert query["error"] == ["invalid_request"]
    assert "PKCE" in query["error_description"][0]


def test_a_wrong_code_verifier_is_refused(oidc_provider: OidcProvider) -> None:
    request = oidc_provider.authorization_request()
    with requests.Session() as browser:
        callback = oidc_provider.login(browser, request.url)
    forged = dataclasses.replace(request, code_verifier="x" * 64)
    assert_invalid_grant(oidc_provider.exchange_code(forged, callback))


def test_offline_access_is_dropped_without_prompt_consent(oidc_provider: OidcProvider) -> None:
    token = oidc_provider.sign_in(prompt=None)
    assert "refresh_token" not in token
    assert "offline_access" not in token["scope"].split()
    assert "access_token" in token and "id_token" in token


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "none"])
def test_a_refresh_rotates_the_refresh_token(oidc_provider: OidcProvider, method: str) -> None:
    token = oidc_provider.sign_in(public=method == "none")
    reply = oidc_provider.refresh(token["refresh_token"], method=method)
    assert reply.status_code == 200, reply.text
    new = reply.json()
    assert new["refresh_token"] != token["refresh_token"]
    assert new["access_token"] != token["access_token"]
    assert jwt_claims(new["id_token"])["sub"] == "alice"
    assert oidc_provider.userinfo(new["access_token"]).status_code == 200
    # The old access token is not revoked by a plain rotation; it lives out its lifetime.
    assert oidc_provider.userinfo(token["access_token"]).status_code == 200
    # The chain goes on: each refresh token presented once.
    again = oidc_provider.refresh(new["refresh_token"], method=method)
    assert again.status_code == 200, again.text
    assert oidc_provider.presentations(token["refresh_token"]) == 1
    assert oidc_provider.presentations(new["refresh_token"]) == 1


def test_reuse_of_a_rotated_refresh_token_revokes_the_whole_grant(
    oidc_provider: OidcProvider,
) -> None:
    token = oidc_provider.sign_in()
    rotated = oidc_provider.refresh(token["refresh_token"])
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert oidc_provider.introspect(new["refresh_token"])["active"] is True

    reuse = oidc_provider.refresh(token["refresh_token"])
    # Status 400, and a description that does not say why ("refresh token already used" is
    # only in the provider's own error detail).
    assert reuse.status_code == 400
    assert reuse.json() == {
        "error": "invalid_grant",
        "error_description": "grant request is invalid",
    }
    assert reuse.headers["Cache-Control"] == "no-store"

    # The whole family is gone: the tokens issued by the rotation and the first access token.
    assert oidc_provider.introspect(new["refresh_token"]) == {"active": False}
    assert oidc_provider.introspect(new["access_token"]) == {"active": False}
    assert oidc_provider.userinfo(new["access_token"]).status_code == 401
    assert oidc_provider.userinfo(token["access_token"]).status_code == 401
    assert_invalid_grant(oidc_provider.refresh(new["refresh_token"]))
    # And the reused token itself was destroyed: no grace, no second chance.
    assert_invalid_grant(oidc_provider.refresh(token["refresh_token"]))

    assert oidc_provider.presentations(token["refresh_token"]) == 3
    assert oidc_provider.presentations(new["refresh_token"]) == 1


def test_concurrent_duplicates_one_wins_then_loses_its_tokens(
    oidc_provider: OidcProvider,
) -> None:
    """The race the extension exists to prevent, shown on the real provider."""
    token = oidc_provider.sign_in()
    n = 6
    barrier = threading.Barrier(n)
    replies: list[requests.Response] = []
    lock = threading.Lock()

    def present() -> None:
        barrier.wait(10)
        reply = oidc_provider.refresh(token["refresh_token"])
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=present) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)

    statuses = sorted(reply.status_code for reply in replies)
    # The in-memory adapter never waits between the check and the consume, so exactly one wins.
    assert statuses == [200] + [400] * (n - 1)
    winner = next(reply.json() for reply in replies if reply.status_code == 200)
    assert oidc_provider.introspect(winner["refresh_token"]) == {"active": False}
    assert oidc_provider.userinfo(winner["access_token"]).status_code == 401
    assert oidc_provider.presentations(token["refresh_token"]) == n


def test_revoking_a_refresh_token_ends_the_grant(oidc_provider: OidcProvider) -> None:
    token = oidc_provider.sign_in()
    reply = oidc_provider.revoke(token["refresh_token"], hint="refresh_token")
    assert reply.status_code == 200
    assert oidc_provider.introspect(token["refresh_token"]) == {"active": False}
    assert_invalid_grant(oidc_provider.refresh(token["refresh_token"]))
    # Revoking a refresh token revokes its grant, the access token with it.
    assert oidc_provider.userinfo(token["access_token"]).status_code == 401
    # Revoking an unknown or dead token still answers 200 (RFC 7009, section 2.2).
    assert oidc_provider.revoke(token["refresh_token"]).status_code == 200


def test_revoking_an_access_token_revokes_its_refresh_token_too(
    oidc_provider: OidcProvider,
) -> None:
    token = oidc_provider.sign_in()
    assert oidc_provider.revoke(token["access_token"], hint="access_token").status_code == 200
    assert oidc_provider.userinfo(token["access_token"]).status_code == 401
    # Every token of the grant goes (only the grant record itself is kept).
    assert oidc_provider.introspect(token["refresh_token"]) == {"active": False}
    assert_invalid_grant(oidc_provider.refresh(token["refresh_token"]))


def test_client_credentials_grant_works_and_is_counted(oidc_provider: OidcProvider) -> None:
    before = oidc_provider.stats()["client_credentials_requests"]
    reply = oidc_provider.client_credentials()
    assert reply.status_code == 200, reply.text
    token = reply.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == oidc_provider.options.access_ttl
    assert "refresh_token" not in token
    assert "id_token" not in token
    info = oidc_provider.introspect(token["access_token"])
    assert info["active"] is True
    assert info["client_id"] == oidc_provider.client_id
    assert "sub" not in info
    assert oidc_provider.stats()["client_credentials_requests"] == before + 1


def test_stats_count_every_presentation_whatever_the_outcome(
    oidc_provider: OidcProvider,
) -> None:
    oidc_provider.reset_stats()
    assert oidc_provider.stats() == {
        "refresh_requests": 0,
        "presentations": {},
        "max_presentations": 0,
        "client_credentials_requests": 0,
    }
    token = oidc_provider.sign_in()
    assert oidc_provider.stats()["refresh_requests"] == 0  # the code exchange is not a refresh

    assert oidc_provider.refresh(token["refresh_token"]).status_code == 200
    assert_invalid_grant(oidc_provider.refresh("not-a-token"))
    # A request the client authentication refuses still presented the token.
    refused = requests.post(
        oidc_provider.endpoint("token"),
        data={"grant_type": "refresh_token", "refresh_token": token["refresh_token"]},
        auth=(oidc_provider.client_id, "wrong-secret"),
        timeout=10,
    )
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"

    stats = oidc_provider.stats()
    assert stats["refresh_requests"] == 3
    assert stats["presentations"] == {
        fingerprint(token["refresh_token"]): 2,
        fingerprint("not-a-token"): 1,
    }
    assert stats["max_presentations"] == 2
    # Fingerprints only: no token value in the oracle's answer.
    assert token["refresh_token"] not in str(stats)


def test_a_second_sign_in_in_the_same_browser_skips_the_login_page(
    oidc_provider: OidcProvider,
) -> None:
    """The provider's session lives in the browser's cookies, as for a real user."""
    forms: list[str] = []

    def record(reply: requests.Response, **_: Any) -> None:
        body = reply.request.body
        if reply.request.method == "POST" and isinstance(body, str):
            forms.append(parse_qs(body)["prompt"][0])

    with requests.Session() as browser:
        browser.hooks["response"].append(record)
        first = oidc_provider.authorization_request()
        oidc_provider.login(browser, first.url, username="bob")
        assert forms == ["login", "consent"]
        second = oidc_provider.authorization_request()
        callback = oidc_provider.login(browser, second.url, username="ignored")
        assert forms == ["login", "consent", "consent"]
    token = oidc_provider.exchange_code(second, callback).json()
    assert jwt_claims(token["id_token"])["sub"] == "bob"


def test_a_dedicated_provider_takes_its_options_and_stops_cleanly(
    make_oidc_provider: Callable[..., OidcProvider],
) -> None:
    callback = f"http://127.0.0.1:{free_port()}/callback"
    provider = make_oidc_provider(redirect_uris=[callback], access_ttl=2, id_token_ttl=5)
    assert provider.issuer != ""
    started = time.monotonic()
    token: dict[str, Any] = provider.sign_in(redirect_uri=callback)
    assert token["expires_in"] == 2
    claims = jwt_claims(token["id_token"])
    assert claims["exp"] - claims["iat"] == 5

    # Only the registered redirect URI is accepted.
    refused = requests.get(
        provider.authorization_request(redirect_uri=DEFAULT_REDIRECT_URI).url,
        allow_redirects=False,
        timeout=10,
    )
    assert refused.status_code == 400
    assert "redirect_uri" in refused.text

    # A short-lived access token dies on time; the refresh token still works.
    time.sleep(max(0.0, started + 3 - time.monotonic()))
    assert provider.userinfo(token["access_token"]).status_code == 401
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200, reply.text

    proc = provider.process.proc
    assert proc is not None
    provider.process.stop()
    assert proc.returncode == 0


def test_logout_at_the_provider_calls_the_back_channel_and_keeps_offline_grants(
    make_oidc_provider: Callable[..., OidcProvider],
) -> None:
    received: list[dict[str, list[str]]] = []

    def backchannel(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        received.append(parse_qs(environ["wsgi.input"].read(length).decode()))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]

    with serve(backchannel) as receiver:
        after_logout = f"{receiver}/signed-out"
        provider = make_oidc_provider(
            post_logout_redirect_uris=[after_logout],
            backchannel_logout_uri=f"{receiver}/backchannel-logout",
        )
        with requests.Session() as browser:
            request = provider.authorization_request()
            callback = provider.login(browser, request.url, username="carol")
            token = provider.exchange_code(request, callback).json()
            landing = provider.logout(
                browser, token["id_token"], post_logout_redirect_uri=after_logout, state="s-1"
            )
    assert landing == f"{after_logout}?state=s-1"

    assert len(received) == 1
    logout = jwt_claims(received[0]["logout_token"][0])
    assert logout["iss"] == provider.issuer
    assert logout["aud"] == provider.client_id
    assert logout["sub"] == "carol"
    assert "http://schemas.openid.net/event/backchannel-logout" in logout["events"]
    assert logout["sid"] == jwt_claims(token["id_token"])["sid"]

    # A grant with offline_access outlives the provider session (persistsLogout): logging out
    # at the provider does not revoke the refresh token; the client has to revoke it itself.
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200, reply.text
