"""Discovery: the provider's endpoints from its metadata, fetched once, checked like config."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
from werkzeug.wrappers import Request, Response

from flask_tokenguard import ConfigurationError
from flask_tokenguard.config import DEFAULTS, Settings
from flask_tokenguard.discovery import Discovery, Endpoints
from flask_tokenguard.errors import ProviderUnavailable
from flask_tokenguard.provider import ClientCredentials, RefreshClient

from .fixtures.apps import make_app
from .fixtures.servers import serve, silent_server


class MetadataServer:
    """Serves a metadata document and counts the requests for it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.hits = 0
        self.lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        if request.path == "/.well-known/openid-configuration":
            with self.lock:
                self.hits += 1
            time.sleep(0.05)  # concurrent first uses overlap
            return Response(json.dumps(self.document), content_type="application/json")(
                environ, start_response
            )
        return Response("not found", 404)(environ, start_response)


def settings(**config: Any) -> Settings:
    return Settings.from_config(
        {
            **DEFAULTS,
            "TOKENGUARD_CLIENT_ID": "c",
            "TOKENGUARD_CLIENT_SECRET": "s",
            "TOKENGUARD_ALLOW_INSECURE_LOOPBACK": True,
            **config,
        }
    )


def test_the_metadata_url_alone_configures_the_endpoints(provider):
    s = settings(TOKENGUARD_SERVER_METADATA_URL=provider.discovery_url)
    assert s.token_url is None  # no longer required
    endpoints = Discovery.from_settings(s).endpoints()
    assert endpoints == Endpoints(
        issuer=provider.url,
        authorize_url=provider.authorize_url,
        token_url=provider.token_url,
        userinfo_url=provider.userinfo_url,
        revocation_url=provider.revocation_url,
        end_session_url=provider.end_session_url,
        jwks_url=provider.jwks_url,
        iss_parameter=True,
    )


def test_without_a_metadata_url_the_token_url_is_still_required():
    with pytest.raises(ConfigurationError, match="TOKENGUARD_TOKEN_URL is required"):
        settings()


def test_keys_set_by_hand_win(provider):
    s = settings(
        TOKENGUARD_SERVER_METADATA_URL=provider.discovery_url,
        TOKENGUARD_TOKEN_URL="https://tokens.example/token",
        TOKENGUARD_REVOCATION_URL="https://tokens.example/revoke",
        TOKENGUARD_ISSUER="https://issuer.example",
    )
    endpoints = Discovery.from_settings(s).endpoints()
    assert endpoints.token_url == "https://tokens.example/token"
    assert endpoints.revocation_url == "https://tokens.example/revoke"
    assert endpoints.issuer == "https://issuer.example"
    assert endpoints.authorize_url == provider.authorize_url


def test_fetched_once_for_many_threads_and_refreshes_need_no_more(provider):
    server = MetadataServer(provider.metadata())
    with serve(server) as base:
        discovery = Discovery.from_settings(
            settings(TOKENGUARD_SERVER_METADATA_URL=f"{base}/.well-known/openid-configuration")
        )
        threads = [threading.Thread(target=discovery.endpoints) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert server.hits == 1
        client = RefreshClient(discovery.token_url, ClientCredentials("demo-client", "demo-secret"))
        for _ in range(3):
            token = provider.issue(expires_in=60)
            assert client.refresh(token["refresh_token"], 5)["access_token"]
        assert server.hits == 1


def test_the_cache_has_a_bounded_lifetime(provider):
    server = MetadataServer(provider.metadata())
    with serve(server) as base:
        discovery = Discovery.from_settings(
            settings(
                TOKENGUARD_SERVER_METADATA_URL=f"{base}/.well-known/openid-configuration",
                TOKENGUARD_METADATA_TTL=0.2,
            )
        )
        discovery.endpoints()
        time.sleep(0.3)
        discovery.endpoints()
        assert server.hits == 2


def test_an_unreachable_metadata_url_is_a_configuration_error_in_bounded_time():
    with silent_server() as base:
        discovery = Discovery.from_settings(
            settings(
                TOKENGUARD_SERVER_METADATA_URL=f"{base}/.well-known/openid-configuration",
                TOKENGUARD_PROVIDER_TIMEOUT=0.5,
                TOKENGUARD_CLAIM_TTL=1,
                TOKENGUARD_WAIT_TIMEOUT=2,
            )
        )
        started = time.monotonic()
        with pytest.raises(ConfigurationError, match="TOKENGUARD_SERVER_METADATA_URL"):
            discovery.endpoints()
        assert time.monotonic() - started < 2


def test_a_refresh_before_discovery_works_is_transient_not_ambiguous():
    with silent_server() as base:
        discovery = Discovery.from_settings(
            settings(
                TOKENGUARD_SERVER_METADATA_URL=f"{base}/.well-known/openid-configuration",
                TOKENGUARD_PROVIDER_TIMEOUT=0.3,
                TOKENGUARD_CLAIM_TTL=1,
                TOKENGUARD_WAIT_TIMEOUT=2,
            )
        )
        client = RefreshClient(discovery.token_url, ClientCredentials("c", "s"))
        with pytest.raises(ProviderUnavailable):  # nothing was sent: the token is kept
            client.refresh("rt", 1)


@pytest.mark.parametrize(
    ("member", "url", "message"),
    [
        ("token_endpoint", "http://id.example.com/token", "plain http:// to id.example.com"),
        ("jwks_uri", "ftp://127.0.0.1/jwks", "must be an https:// URL"),
    ],
)
def test_discovered_urls_follow_the_https_rule(provider, member, url, message):
    document = {**provider.metadata(), member: url}
    with serve(MetadataServer(document)) as base:
        discovery = Discovery.from_settings(
            settings(TOKENGUARD_SERVER_METADATA_URL=f"{base}/.well-known/openid-configuration")
        )
        with pytest.raises(ConfigurationError, match=message) as caught:
            discovery.endpoints()
        assert member in str(caught.value)


def test_discovered_loopback_http_needs_the_opt_in(provider):
    discovery = Discovery(
        metadata_url=provider.discovery_url,
        configured=Endpoints(),
        timeout=2,
        allow_insecure_loopback=False,
    )
    with pytest.raises(ConfigurationError, match="TOKENGUARD_ALLOW_INSECURE_LOOPBACK"):
        discovery.endpoints()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TOKENGUARD_ID_TOKEN_ALGORITHMS", ["HS256"]),
        ("TOKENGUARD_ID_TOKEN_ALGORITHMS", ["none"]),
        ("TOKENGUARD_AUTHORIZE_PARAMS", "prompt=consent"),
        ("TOKENGUARD_AUTHORIZE_PARAMS", {"state": "fixed"}),
        ("TOKENGUARD_AUTHORIZE_PARAMS", {"prompt": ["consent"]}),
    ],
)
def test_new_keys_are_checked_at_start(provider, key, value):
    with pytest.raises(ConfigurationError, match=key):
        settings(TOKENGUARD_SERVER_METADATA_URL=provider.discovery_url, **{key: value})


def test_init_app_does_no_io_and_the_app_starts_while_the_provider_is_down(provider, tmp_path):
    with silent_server() as base:
        app = make_app(
            provider,
            str(tmp_path),
            TOKENGUARD_TOKEN_URL=None,
            TOKENGUARD_SERVER_METADATA_URL=f"{base}/.well-known/openid-configuration",
        )
        assert app.test_client().get("/plain").status_code == 200


def test_openid_without_a_way_to_validate_id_tokens_is_warned_about(provider, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="flask_tokenguard"):
        make_app(provider, str(tmp_path), TOKENGUARD_SCOPE="openid profile")
    assert "TOKENGUARD_SERVER_METADATA_URL" in caplog.text and "guard.user" in caplog.text
