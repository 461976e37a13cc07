"""The demo provider as an OpenID Provider: discovery, ID tokens, revocation and logout.

Every ID and logout token is checked the way a relying party would, with joserfc against the
published JWKS; the provider's own defects (``id_token_fault``) must each fail that check in the
documented way.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.errors import BadSignatureError, ExpiredTokenError, JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry
from werkzeug.wrappers import Request, Response

from flask_tokenguard.login import pkce_pair
from flask_tokenguard.testing import (
    DEFAULT_REDIRECT_URI,
    ID_TOKEN_FAULTS,
    ProviderConfig,
    ProviderHandle,
    ProviderServer,
    ProviderState,
)
from flask_tokenguard.testing.provider.config import BACKCHANNEL_LOGOUT_EVENT
from tests.fixtures.servers import free_port, serve

OIDC_SCOPE = "openid profile email"


def decode(provider: ProviderHandle, token: str) -> jwt.Token:
    """Verify a JWT's signature against the provider's published keys (RS256 only)."""
    keys = KeySet.import_key_set(provider.jwks())  # type: ignore[arg-type]
    return jwt.decode(token, keys, algorithms=["RS256"])


def validate(provider: ProviderHandle, claims: dict[str, Any], **expected: Any) -> None:
    """The ID token claim checks of OpenID Connect Core 3.1.3.7 (no leeway)."""
    options = {
        "iss": {"essential": True, "value": provider.url},
        "aud": {"essential": True, "value": provider.client_id},
        "sub": {"essential": True},
        "exp": {"essential": True},
        "iat": {"essential": True},
    }
    for name, value in expected.items():
        options[name] = {"essential": True, "value": value}
    JWTClaimsRegistry(**options).validate(claims)  # type: ignore[arg-type]


def segments(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a JWT, unverified (to look at what a defect did)."""
    head, body, _ = token.split(".")

    def part(value: str) -> dict[str, Any]:
        return dict(json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))))

    return part(head), part(body)


def sign_in(provider: ProviderHandle, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("scope", OIDC_SCOPE)
    return provider.login(**kwargs)


# --- discovery and keys ------------------------------------------------------------------------


def test_discovery_document(provider: ProviderHandle) -> None:
    doc = provider.metadata()
    issuer = provider.url
    assert doc["issuer"] == issuer
    assert issuer.startswith("http://127.0.0.1:")
    endpoints = {
        "authorization_endpoint": "/authorize",
        "token_endpoint": "/token",
        "userinfo_endpoint": "/userinfo",
        "jwks_uri": "/jwks",
        "revocation_endpoint": "/revoke",
        "introspection_endpoint": "/introspect",
        "end_session_endpoint": "/end_session",
    }
    for name, path in endpoints.items():
        assert doc[name] == issuer + path, name
    assert doc["response_types_supported"] == ["code"]
    assert doc["subject_types_supported"] == ["public"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {
        "authorization_code",
        "refresh_token",
        "client_credentials",
    }
    assert set(doc["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic",
        "client_secret_post",
        "none",
    }
    assert {"openid", "profile", "email", "offline_access"} <= set(doc["scopes_supported"])
    assert {"sub", "iss", "aud", "nonce", "sid", "auth_time", "name", "email"} <= set(
        doc["claims_supported"]
    )
    assert doc["authorization_response_iss_parameter_supported"] is True
    assert doc["backchannel_logout_supported"] is True
    assert doc["backchannel_logout_session_supported"] is True

    # RFC 8414 metadata says the same; the issuer does not follow the Host header.
    oauth = requests.get(f"{issuer}/.well-known/oauth-authorization-server", timeout=5).json()
    assert oauth == doc
    port = urlsplit(issuer).port
    other = requests.get(provider.discovery_url, headers={"Host": f"localhost:{port}"}, timeout=5)
    assert other.json()["issuer"] == issuer


def test_jwks_publishes_one_rsa_signing_key(provider: ProviderHandle) -> None:
    (key,) = provider.jwks()["keys"]
    assert key["kty"] == "RSA"
    assert key["use"] == "sig" and key["alg"] == "RS256"
    assert key["kid"]
    assert "d" not in key and "p" not in key  # public only
    assert base64.urlsafe_b64decode(key["n"] + "==").__len__() * 8 == 2048


def test_key_rotation(provider: ProviderHandle) -> None:
    before = provider.jwks()["keys"][0]["kid"]
    rotated = provider.rotate_keys()
    assert rotated["kid"] != before
    assert rotated["kids"] == [rotated["kid"], before]
    assert [key["kid"] for key in provider.jwks()["keys"]] == rotated["kids"]
    token = sign_in(provider)
    header, _ = segments(token["id_token"])
    assert header["kid"] == rotated["kid"]
    decode(provider, token["id_token"])

    again = provider.rotate_keys(keep_old=False)
    assert [key["kid"] for key in provider.jwks()["keys"]] == [again["kid"]]
    with pytest.raises(JoseError):
        decode(provider, token["id_token"])  # its key is no longer published
    decode(provider, sign_in(provider)["id_token"])


# --- ID tokens ---------------------------------------------------------------------------------


def test_id_token_verifies_and_has_the_claims(provider: ProviderHandle) -> None:
    started = int(time.time())
    token = sign_in(provider, sub="bob", nonce="n-0S6_WzA2Mj")
    decoded = decode(provider, token["id_token"])
    assert decoded.header["alg"] == "RS256"
    assert decoded.header["kid"] in [key["kid"] for key in provider.jwks()["keys"]]
    claims = decoded.claims
    validate(provider, claims, sub="bob", nonce="n-0S6_WzA2Mj", azp=provider.client_id)
    assert claims["exp"] - claims["iat"] == 300
    assert started <= claims["auth_time"] <= claims["iat"] <= time.time()
    assert claims["sid"]
    assert claims["name"] == "Bob"
    assert claims["email"] == "bob@example.com"

    info = provider.userinfo(token["access_token"]).json()
    assert info["sub"] == claims["sub"]
    assert (info["name"], info["email"]) == ("Bob", "bob@example.com")
    stats = provider.stats()
    assert stats["id_tokens"] == 1
    assert provider.issued()["id_tokens"] == [token["id_token"]]


def test_claims_follow_the_scope(provider: ProviderHandle) -> None:
    claims = decode(provider, sign_in(provider, scope="openid")["id_token"]).claims
    assert "name" not in claims and "email" not in claims
    assert "nonce" not in claims  # none was sent
    claims = decode(provider, sign_in(provider, scope="openid email")["id_token"]).claims
    assert claims["email"] == "alice@example.com" and "name" not in claims

    plain = provider.login(scope="profile")
    assert "id_token" not in plain  # OAuth only: no openid, no ID token
    assert "id_token" not in provider.refresh(plain["refresh_token"]).json()


def test_public_client_gets_an_id_token_for_itself(provider: ProviderHandle) -> None:
    token = sign_in(provider, public=True, nonce="abc")
    claims = decode(provider, token["id_token"]).claims
    assert claims["aud"] == claims["azp"] == provider.public_client_id
    assert claims["nonce"] == "abc"


def test_refresh_returns_an_id_token_of_the_same_session(provider: ProviderHandle) -> None:
    token = sign_in(provider, nonce="first")
    first = decode(provider, token["id_token"]).claims
    time.sleep(1.05)  # a later iat
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200, reply.text
    new = reply.json()
    claims = decode(provider, new["id_token"]).claims
    validate(provider, claims)
    for name in ("iss", "sub", "aud", "sid", "auth_time", "name", "email"):
        assert claims[name] == first[name], name
    assert claims["iat"] > first["iat"]
    assert "nonce" not in claims
    # And again, down the family.
    newer = provider.refresh(new["refresh_token"]).json()
    assert decode(provider, newer["id_token"]).claims["sid"] == first["sid"]

    other = decode(provider, sign_in(provider)["id_token"]).claims
    assert other["sid"] != first["sid"]  # another sign-in, another session


def test_admin_issue_with_openid_scope(provider: ProviderHandle) -> None:
    token = provider.issue(sub="carol", scope="openid email", expires_in=60)
    claims = decode(provider, token["id_token"]).claims
    validate(provider, claims, sub="carol")
    assert claims["email"] == "carol@example.com"


def test_authorization_responses_name_the_issuer(provider: ProviderHandle) -> None:
    """RFC 9207: success and error redirects alike."""
    _, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": provider.client_id,
        "redirect_uri": DEFAULT_REDIRECT_URI,
        "scope": "openid",
        "state": "s1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    for extra, key in [({}, "code"), ({"code_challenge_method": "plain"}, "error")]:
        reply = requests.get(
            provider.authorize_url,
            params={**params, **extra},
            allow_redirects=False,
            timeout=5,
        )
        assert reply.status_code == 302
        query = parse_qs(urlsplit(reply.headers["Location"]).query)
        assert query["iss"] == [provider.url]
        assert query["state"] == ["s1"]
        assert key in query


# --- the ID token defects ----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ID_TOKEN_FAULTS)
def test_each_id_token_fault_fails_validation(provider: ProviderHandle, fault: str) -> None:
    provider.set_faults(id_token_fault=fault)
    assert provider.stats()["faults"] == {"id_token_fault": fault}
    token = sign_in(provider, nonce="n-1")
    id_token = token["id_token"]
    header, claims = segments(id_token)

    if fault == "bad_signature":
        with pytest.raises(BadSignatureError):
            decode(provider, id_token)
    elif fault == "alg_none":
        assert header["alg"] == "none"
        assert id_token.endswith(".")
        with pytest.raises(JoseError):
            decode(provider, id_token)
    elif fault == "unknown_kid":
        assert header["kid"] not in [key["kid"] for key in provider.jwks()["keys"]]
        with pytest.raises((JoseError, ValueError)):
            decode(provider, id_token)
    else:
        verified = decode(provider, id_token).claims  # the signature is fine ...
        assert verified == claims
        with pytest.raises(JoseError) as caught:  # ... one claim is not
            validate(provider, verified, sub="alice", nonce="n-1")
        if fault == "expired":
            assert isinstance(caught.value, ExpiredTokenError)
            assert claims["exp"] < time.time() - 300
        wrong = {
            "wrong_sub": ("sub", "alice"),
            "wrong_iss": ("iss", provider.url),
            "wrong_aud": ("aud", provider.client_id),
            "wrong_nonce": ("nonce", "n-1"),
        }
        if fault in wrong:
            name, right = wrong[fault]
            assert claims[name] != right

    # Once: the next ID token (here a refresh's) is sound again.
    stats = provider.stats()
    assert stats["faults"] == {}
    assert stats["faults_fired"] == {"id_token_fault": 1}
    again = provider.refresh(token["refresh_token"]).json()["id_token"]
    validate(provider, decode(provider, again).claims, sub="alice")


def test_id_token_fault_on_a_refresh_and_its_switch(provider: ProviderHandle) -> None:
    token = sign_in(provider)
    provider.set_faults(id_token_fault="wrong_sub")
    claims = decode(provider, provider.refresh(token["refresh_token"]).json()["id_token"]).claims
    assert claims["sub"] != "alice"

    reply = requests.post(
        f"{provider.url}/_admin/faults", json={"id_token_fault": "sometimes"}, timeout=5
    )
    assert reply.status_code == 400
    provider.set_faults(id_token_fault="expired")
    provider.clear_faults()
    assert provider.stats()["faults"] == {}
    provider.set_faults(id_token_fault="expired")
    provider.reset()
    assert provider.stats()["faults"] == {}


# --- revocation (RFC 7009) ---------------------------------------------------------------------


def test_revoking_a_refresh_token_kills_its_family(provider: ProviderHandle) -> None:
    token = sign_in(provider)
    new = provider.refresh(token["refresh_token"]).json()
    reply = provider.revoke_token(new["refresh_token"], "refresh_token")
    assert reply.status_code == 200
    assert reply.json() == {}
    refused = provider.refresh(new["refresh_token"])
    assert refused.status_code == 400
    assert refused.json()["error"] == "invalid_grant"
    assert provider.userinfo(new["access_token"]).status_code == 401
    stats = provider.stats()
    assert stats["revocations"] == 1
    assert stats["families_revoked"] == 1
    assert stats["reuse_detected"] == 0  # revoked, not reused


def test_revoking_an_access_token_revokes_only_it(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    # A wrong hint is only a hint.
    assert provider.revoke_token(token["access_token"], "refresh_token").status_code == 200
    assert provider.userinfo(token["access_token"]).status_code == 401
    reply = provider.refresh(token["refresh_token"])
    assert reply.status_code == 200
    assert provider.userinfo(reply.json()["access_token"]).status_code == 200


def test_revocation_answers_200_for_unknown_tokens(provider: ProviderHandle) -> None:
    for method in ("client_secret_basic", "client_secret_post"):
        reply = provider.revoke_token("garbage-" + method, method=method)
        assert reply.status_code == 200
    assert provider.revoke_token("garbage", method="none").status_code == 200
    assert provider.stats()["revocations"] == 3


def test_revocation_authenticates_the_client(provider: ProviderHandle) -> None:
    token = provider.issue(expires_in=60)
    # A confidential client's token, without its secret: refused, nothing revoked.
    form = {"token": token["refresh_token"], "client_id": provider.client_id}
    reply = requests.post(provider.revocation_url, data=form, timeout=5)
    assert reply.status_code == 401
    assert reply.json()["error"] == "invalid_client"
    wrong = requests.post(provider.revocation_url, data=form, auth=("demo-client", "x"), timeout=5)
    assert wrong.status_code == 401
    # Another client's token is not revoked.
    assert provider.revoke_token(token["refresh_token"], method="none").status_code == 400
    assert provider.revoke_token("x", "id_token").status_code == 400  # unsupported hint
    assert provider.refresh(token["refresh_token"]).status_code == 200
    assert provider.stats()["revocations"] == 0

    public = provider.login(public=True)
    assert provider.revoke_token(public["refresh_token"], method="none").status_code == 200
    assert provider.refresh(public["refresh_token"], method="none").status_code == 400


# --- introspection (RFC 7662) ------------------------------------------------------------------


def test_introspection(provider: ProviderHandle) -> None:
    token = sign_in(provider, sub="hana")
    reply = provider.introspect(token["access_token"])
    assert reply.status_code == 200
    info = reply.json()
    assert info["active"] is True
    assert (info["sub"], info["client_id"], info["iss"]) == (
        "hana",
        provider.client_id,
        provider.url,
    )
    assert info["scope"] == OIDC_SCOPE
    assert info["exp"] - info["iat"] == 20
    refresh = provider.introspect(token["refresh_token"], "refresh_token").json()
    assert refresh["active"] is True and "exp" not in refresh
    assert provider.stats()["max_presentations"] == 0  # introspection is no presentation

    new = provider.refresh(token["refresh_token"]).json()
    assert provider.introspect(token["refresh_token"]).json() == {"active": False}  # used
    assert provider.introspect(new["refresh_token"]).json()["active"] is True
    assert provider.introspect("garbage").json() == {"active": False}
    # Another client's token is not shown to it.
    assert provider.introspect(new["access_token"], method="none").json() == {"active": False}
    provider.revoke_token(new["access_token"])
    assert provider.introspect(new["access_token"]).json() == {"active": False}
    assert provider.introspect(provider.issue()["access_token"]).json() == {"active": False}
    unauthenticated = requests.post(provider.introspection_url, data={"token": "x"}, timeout=5)
    assert unauthenticated.status_code == 401
    assert provider.stats()["introspections"] == 8


# --- RP-initiated logout -----------------------------------------------------------------------


def end_session(provider: ProviderHandle, **params: str) -> requests.Response:
    return requests.get(provider.end_session_url, params=params, allow_redirects=False, timeout=10)


def test_end_session_redirects_with_state_and_revokes(provider: ProviderHandle) -> None:
    token = sign_in(provider)
    new = provider.refresh(token["refresh_token"]).json()
    back = "http://127.0.0.1:8000/signed-out?x=1"
    reply = end_session(
        provider,
        id_token_hint=token["id_token"],  # an older ID token of the session names it too
        post_logout_redirect_uri=back,
        state="st-9",
    )
    assert reply.status_code == 302
    location = urlsplit(reply.headers["Location"])
    assert location._replace(query="").geturl() == "http://127.0.0.1:8000/signed-out"
    assert parse_qs(location.query) == {"x": ["1"], "state": ["st-9"]}
    assert provider.refresh(new["refresh_token"]).status_code == 400
    assert provider.userinfo(new["access_token"]).status_code == 401
    stats = provider.stats()
    assert stats["end_sessions"] == stats["sessions_ended"] == 1

    # Other sessions live on; the ended one is not ended twice.
    other = sign_in(provider)
    assert end_session(provider, id_token_hint=token["id_token"]).status_code == 200
    assert provider.userinfo(other["access_token"]).status_code == 200
    assert provider.stats()["sessions_ended"] == 1


def test_end_session_without_a_redirect_shows_a_page(provider: ProviderHandle) -> None:
    token = sign_in(provider)
    reply = end_session(provider, id_token_hint=token["id_token"])
    assert reply.status_code == 200
    assert "signed out" in reply.text
    assert provider.userinfo(token["access_token"]).status_code == 401
    # With a client_id and no hint: nothing to end, but the browser goes back.
    reply = end_session(
        provider,
        client_id=provider.client_id,
        post_logout_redirect_uri="http://localhost:5000/",
    )
    assert reply.status_code == 302
    assert reply.headers["Location"] == "http://localhost:5000/"


def test_end_session_registered_post_logout_uri(make_provider: Any) -> None:
    provider = make_provider(
        post_logout_redirect_uris=("https://app.example/bye",), allow_loopback_redirects=False
    )
    token = sign_in(provider, redirect_uri="http://127.0.0.1:5000/callback")
    reply = end_session(
        provider,
        id_token_hint=token["id_token"],
        post_logout_redirect_uri="https://app.example/bye",
    )
    assert reply.status_code == 302
    reply = end_session(
        provider, id_token_hint=token["id_token"], post_logout_redirect_uri="http://127.0.0.1:9/"
    )
    assert reply.status_code == 400  # loopback not allowed for this provider


@pytest.mark.parametrize(
    "case", ["foreign-uri", "bad-hint", "other-client", "no-client", "alg-none-hint"]
)
def test_end_session_refuses(provider: ProviderHandle, case: str) -> None:
    token = sign_in(provider)
    params = {"id_token_hint": token["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/"}
    if case == "foreign-uri":
        params["post_logout_redirect_uri"] = "https://evil.example/"
    elif case == "bad-hint":
        params["id_token_hint"] = token["id_token"][:-4] + "AAAA"
    elif case == "other-client":
        params["client_id"] = provider.public_client_id
    elif case == "no-client":
        del params["id_token_hint"]
    else:
        provider.set_faults(id_token_fault="alg_none")
        params["id_token_hint"] = sign_in(provider)["id_token"]
    reply = end_session(provider, **params)
    assert reply.status_code == 400
    assert reply.json()["error"] == "invalid_request"
    assert provider.userinfo(token["access_token"]).status_code == 200  # nothing ended
    assert provider.stats()["end_sessions"] == 0


# --- back-channel logout -----------------------------------------------------------------------


class Receiver:
    """A relying party's back-channel logout endpoint: records what it is sent."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self.lock:
            self.received.append(
                {
                    "method": request.method,
                    "content_type": request.mimetype,
                    "form": request.form.to_dict(flat=False),
                }
            )
        return Response(status=self.status)(environ, start_response)

    def logout_tokens(self) -> list[str]:
        with self.lock:
            return [entry["form"]["logout_token"][0] for entry in self.received]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    app = Receiver()
    with serve(app) as url:
        yield app, f"{url}/backchannel-logout"


def check_logout_token(provider: ProviderHandle, token: str, *, sub: str, sid: str) -> None:
    decoded = decode(provider, token)
    assert decoded.header["typ"] == "logout+jwt"
    claims = decoded.claims
    JWTClaimsRegistry(
        iss={"essential": True, "value": provider.url},
        aud={"essential": True, "value": provider.client_id},
        iat={"essential": True},
        exp={"essential": True},
        jti={"essential": True},
    ).validate(claims)
    assert claims["events"] == {BACKCHANNEL_LOGOUT_EVENT: {}}
    assert (claims["sub"], claims["sid"]) == (sub, sid)
    assert "nonce" not in claims
    assert 0 < claims["exp"] - claims["iat"] <= 120


def test_end_session_sends_a_logout_token(
    provider: ProviderHandle, receiver: tuple[Receiver, str]
) -> None:
    app, uri = receiver
    provider.set_faults(backchannel_logout_uri=uri)
    token = sign_in(provider, sub="dave")
    sid = decode(provider, token["id_token"]).claims["sid"]
    reply = end_session(provider, id_token_hint=token["id_token"])
    assert reply.status_code == 200
    # Delivered before the answer: nothing to wait for.
    assert [(e["method"], e["content_type"]) for e in app.received] == [
        ("POST", "application/x-www-form-urlencoded")
    ]
    assert list(app.received[0]["form"]) == ["logout_token"]
    (logout_token,) = app.logout_tokens()
    check_logout_token(provider, logout_token, sub="dave", sid=sid)
    assert provider.stats()["backchannel_logouts"] == 1

    end_session(provider, id_token_hint=token["id_token"])  # already ended: no news
    assert len(app.received) == 1


def test_admin_logout_by_sub_or_sid(
    provider: ProviderHandle, receiver: tuple[Receiver, str]
) -> None:
    app, uri = receiver
    provider.set_faults(backchannel_logout_uri=uri)
    first, second = sign_in(provider, sub="erin"), sign_in(provider, sub="erin")
    other = sign_in(provider, sub="frank")
    sids = {decode(provider, t["id_token"]).claims["sid"] for t in (first, second)}

    done = provider.logout(sub="erin")
    assert done["ended"] == done["delivered"] == 2
    assert set(done["sids"]) == sids
    for logout_token, sid in zip(app.logout_tokens(), done["sids"]):
        check_logout_token(provider, logout_token, sub="erin", sid=sid)
    for token in (first, second):
        assert provider.refresh(token["refresh_token"]).status_code == 400
    assert provider.userinfo(other["access_token"]).status_code == 200

    frank_sid = decode(provider, other["id_token"]).claims["sid"]
    assert provider.logout(sid=frank_sid) == {"ended": 1, "sids": [frank_sid], "delivered": 1}
    assert provider.userinfo(other["access_token"]).status_code == 401
    assert provider.logout(sid=frank_sid)["ended"] == 0
    assert provider.logout(sub="nobody")["ended"] == 0
    stats = provider.stats()
    assert stats["sessions_ended"] == stats["backchannel_logouts"] == 3
    reply = requests.post(f"{provider.url}/_admin/logout", json={}, timeout=5)
    assert reply.status_code == 400


def test_a_failed_delivery_is_counted_and_bounded(provider: ProviderHandle) -> None:
    with serve(Receiver(status=500)) as url:
        provider.set_faults(backchannel_logout_uri=f"{url}/bcl")
        token = sign_in(provider)
        assert end_session(provider, id_token_hint=token["id_token"]).status_code == 200
    provider.set_faults(backchannel_logout_uri=f"http://127.0.0.1:{free_port()}/bcl")
    token = sign_in(provider)
    started = time.monotonic()
    reply = end_session(
        provider, id_token_hint=token["id_token"], post_logout_redirect_uri="http://127.0.0.1:9/"
    )
    assert reply.status_code == 302  # the logout goes on
    assert time.monotonic() - started < 5
    stats = provider.stats()
    assert stats["backchannel_logouts"] == 0
    assert stats["backchannel_logout_failures"] == 2


def test_the_backchannel_uri_must_be_loopback(provider: ProviderHandle) -> None:
    for uri in ("http://rp.example/logout", "ftp://127.0.0.1/x", 7):
        reply = requests.post(
            f"{provider.url}/_admin/faults", json={"backchannel_logout_uri": uri}, timeout=5
        )
        assert reply.status_code == 400, uri
    with pytest.raises(ValueError, match="loopback"):
        ProviderState(ProviderConfig(backchannel_logout_uri="https://rp.example/bcl"))
    assert provider.set_faults(backchannel_logout_uri="http://localhost:1/x")["settings"][
        "backchannel_logout_uri"
    ] == ("http://localhost:1/x")


# --- client credentials ------------------------------------------------------------------------


def test_client_credentials(provider: ProviderHandle) -> None:
    reply = provider.client_credentials(scope="reports")
    assert reply.status_code == 200, reply.text
    token = reply.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 20
    assert token["scope"] == "reports"
    assert "refresh_token" not in token and "id_token" not in token
    assert provider.userinfo(token["access_token"]).json()["sub"] == provider.client_id
    assert provider.client_credentials(method="client_secret_post").status_code == 200
    stats = provider.stats()
    assert stats["client_credentials_requests"] == stats["client_credentials_issued"] == 2
    assert stats["refresh_requests"] == stats["refreshes"] == 0


def test_client_credentials_is_for_the_confidential_client(provider: ProviderHandle) -> None:
    reply = provider.client_credentials(method="none")
    assert reply.status_code in (400, 401)
    assert reply.json()["error"] in ("unauthorized_client", "invalid_client")
    assert provider.stats()["client_credentials_issued"] == 0


def test_client_credentials_honours_delay_and_faults(provider: ProviderHandle) -> None:
    provider.set_faults(refresh_delay=0.3)
    started = time.monotonic()
    assert provider.client_credentials().status_code == 200
    assert time.monotonic() - started >= 0.3

    provider.set_faults(refresh_delay=0, unavailable_before=1)
    reply = provider.client_credentials()
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    provider.set_faults(garbage=1)
    assert provider.client_credentials().headers["Content-Type"].startswith("text/html")
    stats = provider.stats()
    assert stats["client_credentials_requests"] == 3
    assert stats["client_credentials_issued"] == 2  # the garbage one was issued, then hidden
    assert stats["faults_fired"] == {"unavailable_before": 1, "garbage": 1}


# --- logging -----------------------------------------------------------------------------------


def test_no_token_in_any_log_line(
    provider: ProviderHandle, receiver: tuple[Receiver, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, uri = receiver
    caplog.set_level(logging.DEBUG)
    provider.set_faults(backchannel_logout_uri=uri)
    token = sign_in(provider, sub="gina", nonce="n")
    new = provider.refresh(token["refresh_token"]).json()
    cc = provider.client_credentials().json()
    provider.revoke_token(cc["access_token"])
    # POSTed: a GET would put the hint in urllib3's own DEBUG line of the URL.
    form = {"id_token_hint": new["id_token"], "post_logout_redirect_uri": DEFAULT_REDIRECT_URI}
    reply = requests.post(provider.end_session_url, data=form, allow_redirects=False, timeout=5)
    assert reply.status_code == 302
    provider.set_faults(backchannel_logout_uri=f"http://127.0.0.1:{free_port()}/x")
    sign_in(provider, sub="gina")
    assert provider.logout(sub="gina")["ended"] == 1  # a failed delivery is logged too
    assert caplog.records
    issued = provider.issued()
    secrets = [*issued["access_tokens"], *issued["refresh_tokens"], *issued["id_tokens"]]
    secrets += app.logout_tokens()
    assert len(issued["id_tokens"]) == 3 and len(app.logout_tokens()) == 1
    for value in [*secrets, provider.client_secret]:
        assert value not in caplog.text


def test_the_access_log_leaves_the_id_token_hint_out(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="werkzeug")
    with ProviderServer(quiet=False) as server:
        provider = ProviderHandle(server)
        hint = sign_in(provider)["id_token"]
        reply = requests.get(
            provider.end_session_url, params={"id_token_hint": hint, "state": "s"}, timeout=5
        )
        assert reply.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    assert any("/end_session?id_token_hint=[redacted]&state=s" in line for line in lines), lines
    assert hint not in "\n".join(lines)
