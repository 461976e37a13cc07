"""ID tokens: validated with joserfc at sign-in and on refresh, the signed-in user kept."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import OctKey

from flask_tokenguard.config import DEFAULTS, Settings
from flask_tokenguard.coordinator import Coordinator, Policy
from flask_tokenguard.deadline import Deadline
from flask_tokenguard.discovery import Discovery
from flask_tokenguard.errors import IdTokenError, InvalidGrant
from flask_tokenguard.idtoken import IdTokens, identity
from flask_tokenguard.keys import KeyNames
from flask_tokenguard.provider import ClientCredentials, RefreshClient
from flask_tokenguard.records import RecordCodec
from flask_tokenguard.sealing import Sealer
from flask_tokenguard.stores.memory import MemoryStore

from .fixtures.apps import burst, new_client
from .fixtures.oidc_app import oidc_app
from .fixtures.provider import coordinator_for
from .fixtures.servers import serve


def sign_in(base: str, http: requests.Session | None = None, **tamper: str) -> requests.Response:
    """The browser's sign-in through the demo provider; the app's callback answer."""
    http = http or requests.Session()
    to_provider = http.get(f"{base}/login", allow_redirects=False, timeout=5)
    assert to_provider.status_code == 302
    back = requests.get(to_provider.headers["Location"], allow_redirects=False, timeout=5)
    assert back.status_code == 302, back.text
    callback = back.headers["Location"]
    if tamper:
        parts = urlsplit(callback)
        query = {**dict(parse_qsl(parts.query)), **tamper}
        callback = urlunsplit(parts._replace(query=urlencode(query)))
    return http.get(callback, timeout=5)


def ids_for(provider: Any, **kwargs: Any) -> IdTokens:
    settings = Settings.from_config(
        {
            **DEFAULTS,
            "TOKENGUARD_CLIENT_ID": provider.client_id,
            "TOKENGUARD_CLIENT_SECRET": provider.client_secret,
            "TOKENGUARD_ALLOW_INSECURE_LOOPBACK": True,
            "TOKENGUARD_SERVER_METADATA_URL": provider.discovery_url,
        }
    )
    return IdTokens(Discovery.from_settings(settings), provider.client_id, **kwargs)


# -- sign-in ---------------------------------------------------------------------------------


def test_a_sign_in_shows_who_is_signed_in(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = requests.Session()
        assert http.get(f"{base}/me", timeout=5).status_code == 401
        reply = sign_in(base, http)
        assert reply.status_code == 200, reply.text
        user = reply.json()["user"]
        assert user["sub"] == "alice" and user["iss"] == provider.url
        assert user["name"] and user["email"]
        for protocol_value in ("nonce", "at_hash", "access_token", "refresh_token", "id_token"):
            assert protocol_value not in user
        me = http.get(f"{base}/me", timeout=5).json()
        assert me["sub"] == "alice" and me["claims"] == user
        assert http.get(f"{base}/api/profile", timeout=5).status_code == 200


@pytest.mark.parametrize(
    "fault",
    [
        "wrong_iss",
        "wrong_aud",
        "wrong_nonce",
        "expired",
        "bad_signature",
        "alg_none",
        "unknown_kid",
    ],
)
def test_a_spoilt_id_token_fails_the_sign_in(provider, tmp_path, fault):
    with serve(oidc_app(provider, tmp_path)) as base:
        provider.set_faults(id_token_fault=fault)
        http = requests.Session()
        reply = sign_in(base, http)
        assert reply.status_code == 400
        assert "ID token" in reply.json()["error"]
        assert http.get(f"{base}/me", timeout=5).status_code == 401
        assert http.get(f"{base}/api/profile", timeout=5).status_code == 401


def test_the_issuer_in_the_authorization_response_is_checked(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        reply = sign_in(base, iss="https://attacker.example")
        assert reply.status_code == 400
        assert "issuer" in reply.json()["error"]
        assert provider.stats()["code_exchanges"] == 0  # refused before the code is used


def test_a_key_rotation_is_followed(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        assert sign_in(base).status_code == 200  # the JWKS is cached now
        provider.rotate_keys(keep_old=False)
        assert sign_in(base).status_code == 200


def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(provider, monkeypatch):
    ids = ids_for(provider, refetch_interval=10)
    fetches = []
    real = ids._fetch
    monkeypatch.setattr(ids, "_fetch", lambda: fetches.append(1) or real())
    good = provider.issue(scope="openid", expires_in=60)["id_token"]
    ids.validate(good)
    provider.set_faults(id_token_fault="unknown_kid")
    bad = provider.issue(scope="openid", expires_in=60)["id_token"]
    for _ in range(20):
        with pytest.raises(IdTokenError, match="does not publish"):
            ids.validate(bad)
    assert len(fetches) == 2  # the first, and one refetch for the unknown kid


def test_hmac_keyed_with_the_public_key_and_none_are_refused(provider):
    ids = ids_for(provider)
    claims = {
        "iss": provider.url,
        "sub": "alice",
        "aud": provider.client_id,
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
    }
    public = json.dumps(provider.jwks()["keys"][0]).encode()
    forged = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(public), algorithms=["HS256"])
    with pytest.raises(IdTokenError):
        ids.validate(forged)


def test_several_audiences_need_azp(provider):
    ids = ids_for(provider)
    now = time.time()
    base = {"iss": provider.url, "sub": "alice", "iat": now, "exp": now + 60}
    ids._check_claims({**base, "aud": [provider.client_id]}, None)
    with pytest.raises(IdTokenError, match="authorized party"):
        ids._check_claims({**base, "aud": [provider.client_id, "api"]}, None)
    ids._check_claims({**base, "aud": [provider.client_id, "api"], "azp": provider.client_id}, None)
    with pytest.raises(IdTokenError, match="expired"):
        ids._check_claims({**base, "aud": provider.client_id, "exp": now - 61}, None)
    ids._check_claims({**base, "aud": provider.client_id, "exp": now - 30}, None)  # skew
    with pytest.raises(IdTokenError, match="future"):
        ids._check_claims({**base, "aud": provider.client_id, "iat": now + 120}, None)


# -- refresh -----------------------------------------------------------------------------------


def test_a_refresh_returning_another_user_fails_every_waiting_request(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = new_client(base, provider.issue(scope="openid profile", expires_in=0))
        provider.set_faults(id_token_fault="wrong_sub", refresh_delay=0.3)
        result = burst(http, f"{base}/api/profile", 8)
        assert result.statuses == [401] * 8
        assert provider.stats()["refreshes"] == 1
        assert http.get(f"{base}/api/profile", timeout=5).status_code == 401


def test_a_refresh_with_a_valid_id_token_keeps_the_user(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path)) as base:
        http = new_client(base, provider.issue(scope="openid profile", expires_in=0))
        result = burst(http, f"{base}/api/profile", 8)
        assert result.statuses == [200] * 8
        assert provider.stats()["refreshes"] == 1


def test_a_published_result_for_another_user_is_not_adopted(provider):
    store = MemoryStore()
    ids = ids_for(provider)

    def coordinator(vetter: IdTokens | None) -> Coordinator:
        return coordinator_for(provider, store, vetter=vetter)

    alice = provider.issue("alice", scope="openid", expires_in=0)
    bob = provider.issue("bob", scope="openid", expires_in=0)
    # A result under alice's refresh token that carries bob's ID token (a forged record, say).
    coordinator(None)._publish(
        store, alice["refresh_token"], {**alice, "id_token": bob["id_token"]}
    )
    with pytest.raises(InvalidGrant, match="another user"):
        coordinator(ids).refresh(alice, Deadline(5))
    assert identity(alice) == (provider.url, "alice")


def test_the_leader_vets_before_publishing(provider):
    """A waiter in another process adopts the leader's failure, never the other user's token."""
    store = MemoryStore()
    ids = ids_for(provider)
    make = lambda: coordinator_for(provider, store, vetter=ids)  # noqa: E731
    token = provider.issue(scope="openid", expires_in=0)
    provider.set_faults(id_token_fault="wrong_sub")
    with pytest.raises(InvalidGrant):
        make().refresh(token, Deadline(5))
    with pytest.raises(InvalidGrant):  # another process: the published outcome, no call
        make().refresh(token, Deadline(5))
    assert provider.stats()["refresh_requests"] == 1


def test_userinfo_is_merged_into_the_user_when_asked(provider, tmp_path):
    with serve(oidc_app(provider, tmp_path, TOKENGUARD_FETCH_USERINFO=True)) as base:
        http = requests.Session()
        user = sign_in(base, http).json()["user"]
        assert user["sub"] == "alice" and user["iss"] == provider.url  # from the ID token
        assert user["token_fingerprint"]  # only the userinfo answer has this one
    with serve(oidc_app(provider, tmp_path)) as base:
        assert "token_fingerprint" not in sign_in(base).json()["user"]


def test_the_lost_update_guard_heals_only_to_the_same_user(provider):
    store = MemoryStore()
    coordinator = Coordinator(
        RefreshClient(
            provider.token_url, ClientCredentials(provider.client_id, provider.client_secret)
        ),
        store,
        KeyNames(provider.client_id),
        RecordCodec(Sealer(["secret"], "store")),
        Policy(provider_timeout=2, claim_ttl=3),
        vetter=ids_for(provider),
    )
    alice = provider.issue("alice", scope="openid", expires_in=0)
    bob = provider.issue("bob", scope="openid", expires_in=0)
    coordinator._publish(store, alice["refresh_token"], {**bob, "refresh_token": "rt-next"})
    assert coordinator.newest(alice["refresh_token"], alice) is None
    assert coordinator.newest(alice["refresh_token"]) is not None  # without the check
