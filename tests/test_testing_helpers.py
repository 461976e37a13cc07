"""The helpers users test their own apps with: ``TokenGuardClient`` and ``ProviderHandle``."""

from __future__ import annotations

from typing import Any

import pytest
from flask import jsonify

from flask_tokenguard.testing import ProviderHandle, TokenGuardClient

from .fixtures.apps import make_app


@pytest.mark.parametrize("sessions", ["cookie", "redis"])
def test_a_test_client_signed_in_with_a_token(provider, tmp_path, sessions, request):
    extra: dict[str, Any] = {}
    if sessions == "redis":
        redis_url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("redis_prefix")
        extra["session_redis"] = f"{redis_url}|{prefix}session:"
    app = make_app(provider, str(tmp_path), **extra)
    guard = app.extensions["tokenguard_guard"]

    @app.get("/whoami")
    @guard.token_required
    def whoami() -> Any:
        return jsonify(access_token=guard.token["access_token"])

    app.test_client_class = TokenGuardClient
    token = provider.issue(expires_in=0)  # due: the first request refreshes it
    client = app.test_client(token=token)
    reply = client.get("/whoami")
    assert reply.status_code == 200
    assert reply.json["access_token"] != token["access_token"]
    handle = ProviderHandle(provider.url)
    assert handle.presentations(token["refresh_token"]) == 1
    assert handle.stats()["max_presentations"] == 1

    client.logout()
    assert client.get("/whoami").status_code == 401
    anonymous = app.test_client()
    assert anonymous.get("/whoami").status_code == 401


def test_the_client_needs_the_extension(provider):
    from flask import Flask

    app = Flask("bare")
    app.test_client_class = TokenGuardClient
    with pytest.raises(RuntimeError, match="init_app"):
        app.test_client(token=provider.issue())
