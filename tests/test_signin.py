"""A hardened sign-in: sign-ins in flight, state first, session regeneration, a bounded code
exchange, the missing refresh token said at once, ``next``, no redirect followed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from werkzeug.wrappers import Request, Response

import flask_tokenguard.login as login_module
from flask_tokenguard.errors import OutcomeUnknown
from flask_tokenguard.login import safe_next
from flask_tokenguard.provider import ClientCredentials, RefreshClient
from flask_tokenguard.signals import user_signed_in

from .fixtures.oidc_app import oidc_app
from .fixtures.servers import serve


class FakeTokenEndpoint:
    """A token endpoint answering by path; ``/target`` counts what a redirect would send."""

    def __init__(self) -> None:
        self.target_hits = 0
        self.lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        path = request.path
        body: str | None = None
        if path == "/target":
            with self.lock:
                self.target_hits += 1
            body = '{"access_token": "leaked", "refresh_token": "leaked"}'
        elif path == "/slow":
            time.sleep(3)
            body = '{"access_token": "a"}'
        elif path == "/inf":
            body = '{"access_token": "a", "expires_in": 1e400}'
        elif path == "/list":
            body = '[{"access_token": "a"}]'
        elif path == "/deep":
            body = "[" * 100_000 + "]" * 100_000
        elif path == "/norefresh":
            body = '{"access_token": "a", "token_type": "Bearer", "expires_in": 60}'
        elif path == "/redirect":
            response = Response(status=307)
            response.headers["Location"] = f"{request.host_url}target"
            return response(environ, start_response)
        if body is None:
            return Response("not found", 404)(environ, start_response)
        return Response(body, content_type="application/json")(environ, start_response)


@pytest.fixture
def fake() -> Iterator[tuple[FakeTokenEndpoint, str]]:
    endpoint = FakeTokenEndpoint()
    with serve(endpoint) as base:
        yield endpoint, base


def start(http: requests.Session, base: str, path: str = "/login") -> str:
    """Begin a sign-in; the provider's authorization URL."""
    reply = http.get(f"{base}{path}", allow_redirects=False, timeout=5)
    assert reply.status_code == 302
    return reply.headers["Location"]


def at_provider(authorize_url: str) -> str:
    """The provider's answer: the callback URL with code and state."""
    reply = requests.get(authorize_url, allow_redirects=False, timeout=5)
    assert reply.status_code == 302, reply.text
    return reply.headers["Location"]


def state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


# -- sign-ins in flight ---------------------------------------------------------------------


def test_two_sign_ins_in_flight_both_complete(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        first, second = requests.Session(), None
        tab1 = start(first, base)
        tab2 = start(first, base)
        back2, back1 = at_provider(tab2), at_provider(tab1)
        assert first.get(back2, timeout=5).status_code == 200
        assert first.get(back1, timeout=5).status_code == 200
        assert second is None


def test_a_stray_callback_consumes_nothing_but_its_own(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        back = at_provider(start(http, base))
        forged = back.replace(f"state={state_of(back)}", "state=forged")
        assert http.get(forged, timeout=5).status_code == 400
        assert http.get(back, timeout=5).status_code == 200
        assert http.get(back, timeout=5).status_code == 400  # used once


def test_pending_sign_ins_are_bounded_oldest_dropped(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        urls = [start(http, base) for _ in range(login_module.MAX_PENDING + 1)]
        assert http.get(at_provider(urls[0]), timeout=5).status_code == 400
        assert http.get(at_provider(urls[-1]), timeout=5).status_code == 200


def test_pending_sign_ins_expire(provider, tmp_path, monkeypatch):
    monkeypatch.setattr(login_module, "PENDING_TTL", 0.3)
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        back = at_provider(start(http, base))
        time.sleep(0.4)
        assert http.get(back, timeout=5).status_code == 400


# -- the callback -------------------------------------------------------------------------------


def test_the_providers_error_description_is_logged_not_echoed(provider, tmp_path, caplog):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        state = state_of(start(http, base))
        with caplog.at_level(logging.WARNING, logger="flask_tokenguard"):
            reply = http.get(
                f"{base}/callback",
                params={
                    "state": state,
                    "iss": provider.url,
                    "error": "access_denied",
                    "error_description": "<script>the user said no</script>",
                },
                timeout=5,
            )
        assert reply.status_code == 400
        assert "script" not in reply.text and "said no" not in reply.text
        assert "the user said no" in caplog.text and "access_denied" in caplog.text


def test_an_error_with_the_wrong_state_is_not_even_read(provider, tmp_path, caplog):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        start(http, base)
        with caplog.at_level(logging.WARNING, logger="flask_tokenguard"):
            reply = http.get(
                f"{base}/callback",
                params={"state": "nope", "error": "access_denied", "error_description": "xyz"},
                timeout=5,
            )
        assert reply.status_code == 400 and "state" in reply.json()["error"]
        assert "xyz" not in caplog.text


def test_a_non_ascii_state_is_a_400(provider, tmp_path):
    client = oidc_app(provider, tmp_path).test_client()
    client.get("/login")
    reply = client.get("/callback?state=%C3%A9t%C3%A9&code=x")
    assert reply.status_code == 400
    reply = client.get("/callback?state=%ED%A0%80&code=x")  # a lone surrogate, as bytes
    assert reply.status_code == 400


@pytest.mark.parametrize(
    ("path", "needle"),
    [
        ("/slow", "did not finish within"),
        ("/inf", "TokenError"),
        ("/list", "TokenError"),
        ("/deep", "code exchange failed"),
        ("/redirect", "answered 307"),
    ],
)
def test_an_odd_code_exchange_is_a_login_error(provider, tmp_path, fake, path, needle):
    endpoint, fake_base = fake
    app = oidc_app(
        provider,
        tmp_path,
        TOKENGUARD_TOKEN_URL=f"{fake_base}{path}",
        TOKENGUARD_PROVIDER_TIMEOUT=0.5,
        TOKENGUARD_CLAIM_TTL=1,
        TOKENGUARD_WAIT_TIMEOUT=2,
    )
    with serve(app) as base:
        http = requests.Session()
        back = at_provider(start(http, base))
        started = time.monotonic()
        reply = http.get(back, timeout=10)
        assert time.monotonic() - started < 2
        assert reply.status_code == 400
        assert needle in reply.json()["error"]
    assert endpoint.target_hits == 0  # nothing sent on to where a redirect points


def test_a_redirect_at_refresh_is_ambiguous_and_not_followed(fake):
    endpoint, fake_base = fake
    client = RefreshClient(f"{fake_base}/redirect", ClientCredentials("c", "s"))
    with pytest.raises(OutcomeUnknown):
        client.refresh("rt", 2)
    assert endpoint.target_hits == 0


def test_a_sign_in_without_a_refresh_token_says_why_at_once(provider, tmp_path, fake, caplog):
    _, fake_base = fake
    app = oidc_app(
        provider, tmp_path, TOKENGUARD_TOKEN_URL=f"{fake_base}/norefresh", TOKENGUARD_SCOPE="email"
    )
    with serve(app) as base:
        http = requests.Session()
        with caplog.at_level(logging.WARNING, logger="flask_tokenguard"):
            assert http.get(at_provider(start(http, base)), timeout=5).status_code == 200
    assert "no refresh token" in caplog.text
    assert "prompt=consent" in caplog.text and "access_type=offline" in caplog.text


def test_authorize_params_are_sent(provider, tmp_path):
    app = oidc_app(provider, tmp_path, TOKENGUARD_AUTHORIZE_PARAMS={"prompt": "consent"})
    location = app.test_client().get("/login").headers["Location"]
    query = parse_qs(urlsplit(location).query)
    assert query["prompt"] == ["consent"]
    assert query["scope"] == ["openid profile email offline_access"]
    assert query["nonce"][0] and query["code_challenge_method"] == ["S256"]


def test_user_signed_in_is_sent_once_with_token_and_claims(provider, tmp_path):
    app = oidc_app(provider, tmp_path)
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    user_signed_in.connect(receiver)
    try:
        with serve(app) as base:
            http = requests.Session()
            assert http.get(at_provider(start(http, base)), timeout=5).status_code == 200
    finally:
        user_signed_in.disconnect(receiver)
    assert len(seen) == 1
    assert seen[0]["sender"] is app
    assert seen[0]["token"]["refresh_token"] and seen[0]["claims"]["sub"] == "alice"


# -- session regeneration -----------------------------------------------------------------------


def test_a_session_id_planted_before_sign_in_is_worthless_after(
    provider, tmp_path, redis_url, redis_prefix
):
    app = oidc_app(provider, tmp_path, session_redis=f"{redis_url}|{redis_prefix}")
    with serve(app) as base:
        http = requests.Session()
        authorize = start(http, base)
        planted = http.cookies["session"]  # the attacker's sid, set in the victim's browser
        assert http.get(at_provider(authorize), timeout=5).status_code == 200
        assert http.cookies["session"] != planted
        assert http.get(f"{base}/me", timeout=5).status_code == 200
        attacker = requests.Session()
        attacker.cookies.set("session", planted)
        assert attacker.get(f"{base}/me", timeout=5).status_code == 401
        assert attacker.get(f"{base}/api/profile", timeout=5).status_code == 401


def test_the_cookie_sessions_id_is_rotated_at_sign_in(provider, tmp_path):
    """Tokens in the session: the id its seals are bound to is replaced."""
    app = oidc_app(provider, tmp_path, TOKENGUARD_TOKEN_STORAGE="session")
    client = app.test_client()
    sid_key = app.extensions["tokenguard"].rules.tokens.sid_key
    with client.session_transaction() as session:
        session[sid_key] = "planted"
    location = client.get("/login").headers["Location"]
    back = urlsplit(at_provider(location))
    assert client.get(f"{back.path}?{back.query}").status_code == 200
    with client.session_transaction() as session:
        assert session[sid_key] != "planted"


def test_a_planted_ticket_is_replaced_at_sign_in(provider, tmp_path):
    """Tokens in the store: a ticket planted before sign-in names no record after it."""
    app = oidc_app(provider, tmp_path)
    client = app.test_client()
    key = app.extensions["tokenguard"].rules.tokens.key
    planted = {"v": 3, "id": "planted-id", "k": "A" * 43, "exp": None, "due": None, "st": "ok"}
    with client.session_transaction() as session:
        session[key] = planted
    location = client.get("/login").headers["Location"]
    back = urlsplit(at_provider(location))
    assert client.get(f"{back.path}?{back.query}").status_code == 200
    with client.session_transaction() as session:
        assert session[key]["id"] != "planted-id" and session[key]["k"] != planted["k"]
    assert client.get("/api/profile").status_code == 200


# -- next ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/reports?page=2", "/reports?page=2"),
        ("/", "/"),
        ("https://evil.example/", None),
        ("//evil.example/", None),
        ("/\\evil.example", None),
        ("\\\\evil.example", None),
        ("/a\r\nLocation: x", None),
        ("/tab\there", None),
        ("javascript:alert(1)", None),
        (" /x", None),
        ("", None),
    ],
)
def test_next_is_a_path_on_this_host(value, expected):
    assert safe_next(value) == expected


def test_next_survives_the_sign_in(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path, TOKENGUARD_LOGIN_VIEW="login")) as base:
        http = requests.Session()
        nav = http.get(
            f"{base}/api/profile?x=1", headers={"Accept": "text/html"}, allow_redirects=False
        )
        assert nav.status_code == 302
        login_path = urlsplit(nav.headers["Location"])
        assert parse_qs(login_path.query)["next"] == ["/api/profile?x=1"]
        authorize = start(http, base, f"{login_path.path}?{login_path.query}")
        done = http.get(at_provider(authorize), timeout=5).json()
        assert done["next"] == "/api/profile?x=1"


def test_an_unsafe_next_falls_back_to_the_default(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        authorize = start(http, base, "/login?next=//evil.example/")
        assert http.get(at_provider(authorize), timeout=5).json()["next"] == "/"


def test_signing_in_again_logs_the_previous_token_out(provider, tmp_path):
    app = oidc_app(provider, tmp_path, TOKENGUARD_LEEWAY=5)
    with serve(app) as base:
        http = requests.Session()
        http.post(f"{base}/_test/seed", json=provider.issue(expires_in=6), timeout=5)
        before = requests.Session()
        before.cookies.update(http.cookies)  # a copy of the cookie before the new sign-in
        assert http.get(at_provider(start(http, base)), timeout=5).status_code == 200
        time.sleep(3.3)  # the old token is due
        assert before.get(f"{base}/api/profile", timeout=5).status_code == 401
        assert provider.stats()["refresh_requests"] == 0
