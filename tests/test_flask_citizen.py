"""The extension as a good Flask citizen.

Requests that have nothing to do with tokens are untouched (no ``Vary: Cookie``, no
``Set-Cookie``, no session store round trip the app did not cause), blueprints can be exempt,
the handlers are replaceable, async views work, and configuration mistakes are caught at
``init_app`` with errors that name the key and leak nothing.

docs/design.md, "The per-request rules".
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import redis
from flask import Blueprint, Flask, jsonify

from flask_tokenguard import ConfigurationError, TokenGuard
from flask_tokenguard.config import Settings
from flask_tokenguard.extension import _workers
from flask_tokenguard.provider import ClientCredentials
from flask_tokenguard.rules import RequestState

from .fixtures.apps import make_app

CLIENT_SECRET = "client-secret-that-must-never-show"
SECRET = "sealing-secret-that-must-never-show-0123456789"


def base_config(**extra: Any) -> dict[str, Any]:
    return {
        "SECRET_KEY": SECRET,
        "TOKENGUARD_CLIENT_ID": "client",
        "TOKENGUARD_CLIENT_SECRET": CLIENT_SECRET,
        "TOKENGUARD_TOKEN_URL": "https://provider.test/token",
        "TOKENGUARD_CACHE_URL": "simple://",
        **extra,
    }


class CountingRedis(redis.Redis):
    """Counts the commands Flask-Session sends."""

    commands = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).commands += 1
        return super().execute_command(*args, **options)


def citizen_app(
    provider: Any, *, guarded: bool, session_redis: Any = None, prefix: str = ""
) -> Flask:
    app = Flask(f"citizen_{guarded}")
    app.config.update(
        base_config(
            TOKENGUARD_CLIENT_ID=provider.client_id,
            TOKENGUARD_CLIENT_SECRET=provider.client_secret,
            TOKENGUARD_TOKEN_URL=provider.token_url,
            TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,
        )
    )
    if session_redis is not None:
        from flask_session import Session

        app.config.update(
            SESSION_TYPE="redis",
            SESSION_REDIS=session_redis,
            SESSION_KEY_PREFIX=prefix,
            SESSION_SERIALIZATION_FORMAT="json",
        )
        Session(app)
    guard = TokenGuard(app) if guarded else None

    @app.get("/plain")
    def plain() -> Any:
        return "plain"

    @app.get("/public")
    def public() -> Any:
        return "public"

    @app.post("/seed")
    def seed() -> Any:
        from flask import request, session

        if guard is not None:
            guard.login(request.get_json())
        else:
            session["token"] = "x"
        return "ok"

    if guard is not None:
        guard.exempt(public)
    return app


def headers_of(reply: Any) -> tuple[bool, bool]:
    return "Cookie" in reply.headers.get("Vary", ""), "Set-Cookie" in reply.headers


@pytest.mark.parametrize("path", ["/plain", "/public", "/missing"])
def test_a_request_without_a_session_cookie_is_untouched(provider, path):
    app = citizen_app(provider, guarded=True)
    reply = app.test_client().get(path)
    assert headers_of(reply) == (False, False)


@pytest.mark.parametrize("path", ["/public", "/missing"])
def test_an_exempt_request_with_a_session_is_untouched(provider, path):
    app = citizen_app(provider, guarded=True)
    client = app.test_client()
    client.post("/seed", json=provider.issue(expires_in=3600))
    reply = client.get(path)
    assert headers_of(reply) == (False, False)


@pytest.mark.parametrize(
    ("path", "with_cookie"),
    [
        ("/plain", False),
        ("/public", False),
        ("/missing", False),
        ("/public", True),
        ("/missing", True),
    ],
)
def test_flask_session_makes_no_round_trip_the_app_did_not_cause(
    provider, redis_url, redis_prefix, path, with_cookie
):
    """With Flask-Session, the guarded app costs the store what the bare app costs, no more."""
    seen = []
    for guarded in (False, True):
        client_redis = CountingRedis.from_url(redis_url)
        app = citizen_app(
            provider,
            guarded=guarded,
            session_redis=client_redis,
            prefix=f"{redis_prefix}s{guarded}:",
        )
        client = app.test_client()
        if with_cookie:
            client.post("/seed", json=provider.issue(expires_in=3600))
        CountingRedis.commands = 0
        reply = client.get(path)
        seen.append((CountingRedis.commands, *headers_of(reply)))
        client_redis.close()
    bare, guarded_app = seen
    assert guarded_app == bare, (
        f"bare app (commands, vary, set-cookie) {bare}, guarded {guarded_app}"
    )
    if not with_cookie:
        assert bare == (0, False, False)


def test_a_blueprint_can_be_exempt(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]
    health = Blueprint("health", __name__)

    @health.get("/health")
    def check() -> Any:
        return jsonify(ok=True)

    guard.exempt(health)
    app.register_blueprint(health)
    client = app.test_client()
    client.post("/_test/seed", json=provider.issue(expires_in=0))
    assert client.get("/health").status_code == 200
    assert provider.stats()["refresh_requests"] == 0
    assert client.get("/plain").status_code == 200
    assert provider.stats()["refresh_requests"] == 1


def test_the_unavailable_handler_replaces_the_503(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]
    seen = []

    @guard.unavailable_handler
    def busy(error: Any) -> Any:
        seen.append(error)
        return jsonify(custom=True), 503

    client = app.test_client()
    client.post("/_test/seed", json=provider.issue(expires_in=0))
    provider.set_faults(unavailable_before=1)
    reply = client.get("/api/profile")
    assert reply.status_code == 503 and reply.json == {"custom": True}
    assert seen and seen[0].outcome.value == "transient"


def test_an_async_view_is_protected(provider, tmp_path):
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]

    @app.get("/async")
    @guard.token_required
    async def async_view() -> Any:
        token = guard.token
        return jsonify(has_token=token is not None)

    client = app.test_client()
    assert client.get("/async").status_code == 401
    client.post("/_test/seed", json=provider.issue(expires_in=0))
    reply = client.get("/async")
    assert reply.status_code == 200 and reply.json == {"has_token": True}
    assert provider.stats()["refreshes"] == 1


# -- configuration mistakes, caught at start -------------------------------------------------


def test_an_unknown_key_is_logged_with_the_nearest_known_one(caplog):
    app = Flask("typo")
    app.config.update(base_config(TOKENGUARD_LEWAY=30))
    with caplog.at_level(logging.WARNING, "flask_tokenguard"):
        TokenGuard(app)
    assert "TOKENGUARD_LEWAY" in caplog.text and "did you mean TOKENGUARD_LEEWAY" in caplog.text


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"TOKENGUARD_TOKEN_URL": "http://provider.example/token"}, "use https://"),
        (
            {"TOKENGUARD_TOKEN_URL": "http://127.0.0.1:5001/token"},
            "TOKENGUARD_ALLOW_INSECURE_LOOPBACK",
        ),
        (
            {"TOKENGUARD_AUTHORIZE_URL": "http://localhost:5001/authorize"},
            "TOKENGUARD_ALLOW_INSECURE_LOOPBACK",
        ),
        (
            {
                "TOKENGUARD_TOKEN_URL": "http://10.0.0.8/token",
                "TOKENGUARD_ALLOW_INSECURE_LOOPBACK": True,
            },
            "use https://",
        ),
    ],
)
def test_plain_http_is_refused_at_start_with_the_fix(config, named):
    app = Flask("http")
    app.config.update(base_config(**config))
    with pytest.raises(ConfigurationError, match=named):
        TokenGuard(app)


def test_loopback_http_is_one_setting_away():
    app = Flask("loopback")
    app.config.update(
        base_config(
            TOKENGUARD_TOKEN_URL="http://127.0.0.1:5001/token",
            TOKENGUARD_AUTHORIZE_URL="http://[::1]:5001/authorize",
            TOKENGUARD_ALLOW_INSECURE_LOOPBACK=True,
        )
    )
    TokenGuard(app)


def test_a_login_view_that_does_not_resolve_names_the_key(provider, tmp_path):
    app = make_app(provider, str(tmp_path), TOKENGUARD_LOGIN_VIEW="no_such_view")
    app.config["PROPAGATE_EXCEPTIONS"] = True
    client = app.test_client()
    with pytest.raises(ConfigurationError, match="TOKENGUARD_LOGIN_VIEW"):
        client.get("/api/profile", headers={"Accept": "text/html"})


def test_an_unreachable_store_is_logged_once_at_start(caplog):
    app = Flask("store_down")
    app.config.update(base_config(TOKENGUARD_CACHE_URL="redis://127.0.0.1:1/0"))
    with caplog.at_level(logging.WARNING, "flask_tokenguard"):
        TokenGuard(app)
    lines = [r for r in caplog.records if "cannot be reached" in r.getMessage()]
    assert len(lines) == 1
    assert "TOKENGUARD_CACHE_URL" in lines[0].getMessage()


@pytest.mark.parametrize(
    ("argv", "env", "workers"),
    [
        (["gunicorn", "-w", "1", "app:app"], {}, 1),
        (["gunicorn", "app:app"], {}, 1),
        (["gunicorn", "-w", "4", "app:app"], {}, 4),
        (["gunicorn", "-w4", "app:app"], {}, 4),
        (["gunicorn", "--workers=3", "app:app"], {}, 3),
        (["gunicorn", "app:app"], {"WEB_CONCURRENCY": "2"}, 2),
        (["gunicorn", "app:app"], {"GUNICORN_CMD_ARGS": "--workers 5"}, 5),
        (["uwsgi", "--processes", "4"], {}, 4),
        (["flask", "run"], {"WEB_CONCURRENCY": "8"}, 1),
    ],
)
def test_the_worker_count_comes_from_the_command_line(monkeypatch, argv, env, workers):
    monkeypatch.setattr("sys.argv", argv)
    for key in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert _workers() == workers


def test_simple_store_warns_only_under_several_workers(monkeypatch, caplog):
    for argv, warned in (
        (["gunicorn", "-w", "1", "a:app"], False),
        (["gunicorn", "-w", "2", "a:app"], True),
    ):
        monkeypatch.setattr("sys.argv", argv)
        caplog.clear()
        app = Flask("simple")
        app.config.update(base_config())
        with caplog.at_level(logging.WARNING, "flask_tokenguard"):
            TokenGuard(app)
        assert ("simple://" in caplog.text) is warned


def test_a_short_secret_is_warned_about_and_a_non_string_one_is_an_error(caplog):
    app = Flask("weak")
    app.config.update(base_config(SECRET_KEY="short"))
    with caplog.at_level(logging.WARNING, "flask_tokenguard"):
        TokenGuard(app)
    assert "SECRET_KEY is 5 bytes long" in caplog.text
    assert "short" not in caplog.text.replace("5 bytes long", "")
    app = Flask("typed")
    app.config.update(base_config(TOKENGUARD_SECRET=12345))
    with pytest.raises(ConfigurationError, match="TOKENGUARD_SECRET"):
        TokenGuard(app)


def test_no_secret_in_any_repr(provider, tmp_path):
    app = Flask("reprs")
    app.config.update(base_config(TOKENGUARD_SECRET=SECRET + "-guard"))
    TokenGuard(app)
    state = app.extensions["tokenguard"]
    texts = [
        repr(Settings.from_config(app.config)),
        repr(ClientCredentials("client", CLIENT_SECRET)),
        repr(state),
        repr(vars(state)),
        repr(state.login.__dict__),
    ]
    app2 = make_app(provider, str(tmp_path))
    token = provider.issue(expires_in=3600)
    with app2.test_request_context():
        guard = app2.extensions["tokenguard_guard"]
        guard.login(token)
        from flask import g

        request_state = g._tokenguard
        assert isinstance(request_state, RequestState)
        texts.append(repr(request_state))
    for text in texts:
        assert CLIENT_SECRET not in text and SECRET not in text
        assert token["access_token"] not in text and token["refresh_token"] not in text


def test_bodies_carry_a_fixed_message_never_the_store_or_provider_detail(provider, tmp_path):
    app = make_app(
        provider,
        str(tmp_path),
        TOKENGUARD_CACHE_URL="redis://127.0.0.1:1/0",
        TOKENGUARD_TOKEN_STORAGE="session",  # the token is in hand; only the refresh needs it
    )
    client = app.test_client()
    client.post("/_test/seed", json=provider.issue(expires_in=0))
    reply = client.get("/api/profile")
    assert reply.status_code == 503
    body = reply.get_data(as_text=True)
    assert "127.0.0.1" not in body and "Connection" not in body
    assert reply.json["outcome"] == "store"

    app = make_app(provider, str(tmp_path / "2"))
    client = app.test_client()
    token = provider.issue(expires_in=0)
    client.post("/_test/seed", json=token)
    provider.revoke(token["refresh_token"])
    reply = client.get("/api/profile")
    assert reply.status_code == 401
    assert reply.json == {
        "error": "unauthorized",
        "outcome": "definitive",
        "message": "sign-in required",
    }


def test_a_hand_rolled_code_exchange_is_normalised_and_refreshed_when_due(provider, tmp_path):
    """A plain RFC 6749 reply (``expires_in``, no ``expires_at``) gets one fixed expiry."""
    provider.set_faults(access_ttl=2)
    reply = provider.login()  # the code flow done by hand, as an app of its own would
    reply.pop("expires_at", None)
    assert reply["expires_in"] == 2
    app = make_app(provider, str(tmp_path))
    guard = app.extensions["tokenguard_guard"]
    client = app.test_client()
    before = time.time()
    client.post("/_test/seed", json=reply)
    with client.session_transaction() as session:
        record = guard_record(app, session)
    assert before + 2 <= record.exp <= time.time() + 2
    assert record.due == pytest.approx(record.exp - 1, abs=0.01)  # half of its 2 s
    first = client.get("/_test/token").json
    time.sleep(0.2)
    assert client.get("/_test/token").json == first  # the expiry does not slide
    assert provider.stats()["refreshes"] == 0
    time.sleep(1.0)  # now due
    assert client.get("/api/profile").status_code == 200
    assert provider.stats()["refreshes"] == 1
    assert guard is not None


def guard_record(app: Flask, session: Any) -> Any:
    return app.extensions["tokenguard"].rules.tokens.peek(session)
