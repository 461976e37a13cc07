"""Configuration: defaults, checks at init_app, coercion of values from the environment.

The timing checks are those of docs/design.md, "Failure ways" (6. Leader death).
"""

from __future__ import annotations

import pytest
from flask import Flask

from flask_tokenguard import ConfigurationError, TokenGuard
from flask_tokenguard.config import DEFAULTS, Settings


def base(**overrides):
    config = dict(DEFAULTS)
    config.update(
        TOKENGUARD_CLIENT_ID="client",
        TOKENGUARD_CLIENT_SECRET="secret",
        TOKENGUARD_TOKEN_URL="https://provider.test/token",
        TOKENGUARD_CACHE_URL="simple://",
    )
    config.update(overrides)
    return config


@pytest.mark.parametrize("key", ["TOKENGUARD_CLIENT_ID", "TOKENGUARD_TOKEN_URL"])
def test_a_missing_required_key_is_named(key):
    with pytest.raises(ConfigurationError, match=key):
        Settings.from_config(base(**{key: None}))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TOKENGUARD_LEEWAY", "soon"),
        ("TOKENGUARD_LEEWAY", -1),
        ("TOKENGUARD_PROVIDER_TIMEOUT", 0),
        ("TOKENGUARD_CLIENT_AUTH", "private_key_jwt"),
        ("TOKENGUARD_STORE_FALLBACK", "open"),
        ("TOKENGUARD_TOKEN_URL", "ftp://x"),
        ("TOKENGUARD_AUTO_REFRESH", "maybe"),
        ("TOKENGUARD_SCOPE", 42),
        ("TOKENGUARD_CLIENT_ID", ["a"]),
    ],
)
def test_a_mistyped_value_is_named(key, value):
    with pytest.raises(ConfigurationError, match=key):
        Settings.from_config(base(**{key: value}))


def test_timings_must_allow_a_takeover():
    with pytest.raises(ConfigurationError, match="TOKENGUARD_CLAIM_TTL"):
        Settings.from_config(base(TOKENGUARD_PROVIDER_TIMEOUT=20, TOKENGUARD_CLAIM_TTL=10))
    with pytest.raises(ConfigurationError, match="TOKENGUARD_WAIT_TIMEOUT"):
        Settings.from_config(base(TOKENGUARD_WAIT_TIMEOUT=5))


def test_the_restart_hold_leaves_time_to_reassert_and_is_at_most_a_claim_ttl():
    with pytest.raises(ConfigurationError, match="TOKENGUARD_RESTART_HOLD"):
        Settings.from_config(base(TOKENGUARD_RESTART_HOLD=0.1))
    assert Settings.from_config(base()).restart_hold == 2
    longest = base(TOKENGUARD_RESTART_HOLD=60, TOKENGUARD_CLAIM_TTL=15)
    assert Settings.from_config(longest).restart_hold == 15  # the old hold: one claim TTL


def test_a_secret_is_needed_unless_the_client_is_public():
    with pytest.raises(ConfigurationError, match="TOKENGUARD_CLIENT_SECRET"):
        Settings.from_config(base(TOKENGUARD_CLIENT_SECRET=None))
    assert Settings.from_config(base(TOKENGUARD_CLIENT_SECRET=None, TOKENGUARD_CLIENT_AUTH="none"))


def test_values_from_the_environment_are_coerced(monkeypatch):
    monkeypatch.setenv("FLASK_TOKENGUARD_CLIENT_ID", "12345")
    monkeypatch.setenv("FLASK_TOKENGUARD_LEEWAY", "30")
    monkeypatch.setenv("FLASK_TOKENGUARD_SCOPE", '"openid profile"')
    app = Flask(__name__)
    app.config.update(base(TOKENGUARD_CLIENT_ID=None))
    app.config.from_prefixed_env()
    settings = Settings.from_config(app.config)
    assert settings.client_id == "12345"
    assert settings.leeway == 30.0
    assert settings.scope == ("openid", "profile")


def test_init_app_sets_defaults_and_refuses_a_second_registration(tmp_path):
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(
        SECRET_KEY="k",
        TOKENGUARD_CLIENT_ID="c",
        TOKENGUARD_CLIENT_SECRET="s",
        TOKENGUARD_TOKEN_URL="https://p.test/token",
        TOKENGUARD_CACHE_URL="simple://",
    )
    guard = TokenGuard()
    guard.init_app(app)
    assert app.config["TOKENGUARD_LEEWAY"] == DEFAULTS["TOKENGUARD_LEEWAY"]
    assert "tokenguard" in app.extensions
    with pytest.raises(RuntimeError, match="already registered"):
        guard.init_app(app)


def test_two_apps_one_guard(tmp_path):
    guard = TokenGuard()
    apps = []
    for i in range(2):
        app = Flask(f"app{i}", instance_path=str(tmp_path / str(i)))
        app.config.update(
            SECRET_KEY=f"k{i}",
            TOKENGUARD_CLIENT_ID=f"c{i}",
            TOKENGUARD_CLIENT_SECRET="s",
            TOKENGUARD_TOKEN_URL="https://p.test/token",
            TOKENGUARD_CACHE_URL="simple://",
        )
        guard.init_app(app)
        apps.append(app)
    assert apps[0].extensions["tokenguard"] is not apps[1].extensions["tokenguard"]
    assert apps[0].extensions["tokenguard"].settings.client_id == "c0"


def test_no_secret_at_all_is_an_error(tmp_path):
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(
        TOKENGUARD_CLIENT_ID="c",
        TOKENGUARD_CLIENT_SECRET="s",
        TOKENGUARD_TOKEN_URL="https://p.test/token",
        TOKENGUARD_CACHE_URL="simple://",
    )
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        TokenGuard(app)


def test_outside_init_app_the_error_says_so():
    app = Flask(__name__)
    guard = TokenGuard()
    with app.test_request_context(), pytest.raises(RuntimeError, match="init_app"):
        _ = guard.token
