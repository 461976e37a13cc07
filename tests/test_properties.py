"""Properties over many inputs (hypothesis): classification, token checks, sealing.

docs/design.md, "Outcome classes" and "Sealing and key names".

A bounded profile runs in CI (``HYPOTHESIS_PROFILE=ci``, registered in conftest.py).
"""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from flask_tokenguard.errors import (
    InvalidGrant,
    OutcomeUnknown,
    ProviderError,
    ProviderUnavailable,
    RefreshError,
    TokenError,
)
from flask_tokenguard.provider import classify_response
from flask_tokenguard.sealing import Sealer, SealError
from flask_tokenguard.token import accept

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
errors = st.sampled_from(
    ["invalid_grant", "invalid_client", "invalid_request", "temporarily_unavailable",
     "server_error", "unauthorized_client", ""]
)  # fmt: skip


def response(status: int, body: str) -> requests.Response:
    reply = requests.Response()
    reply.status_code = status
    reply._content = body.encode("utf-8")
    return reply


def classify(status: int, body: str) -> object:
    try:
        return classify_response(
            response(status, body), previous_refresh_token="rt0", default_retry_after=5
        )
    except RefreshError as exc:
        return exc


@given(status=st.integers(100, 599), body=json_values.map(json.dumps) | st.text(max_size=50))
def test_every_response_is_a_token_or_one_classified_error(status, body):
    outcome = classify(status, body)
    assert isinstance(outcome, dict | RefreshError)
    if isinstance(outcome, dict):
        assert 200 <= status < 300
        assert outcome["access_token"]


@given(
    status=st.integers(100, 599),
    error=errors,
    extra=st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2),
)
def test_only_invalid_grant_with_400_401_403_is_definitive(status, error, extra):
    outcome = classify(status, json.dumps({**extra, "error": error}))
    if isinstance(outcome, InvalidGrant):
        assert error == "invalid_grant" and status in (400, 401, 403)
    if error == "invalid_grant" and status in (400, 401, 403):
        assert isinstance(outcome, InvalidGrant)


@given(status=st.sampled_from([502, 504, 501, 301, 302, 307, 418, 404]), body=st.text(max_size=30))
def test_gateways_redirects_and_bare_4xx_are_ambiguous(status, body):
    try:
        is_oauth_error = isinstance(json.loads(body), dict) and "error" in json.loads(body)
    except ValueError:
        is_oauth_error = False
    outcome = classify(status, body)
    if not (400 <= status < 500 and is_oauth_error):
        assert isinstance(outcome, OutcomeUnknown)


@given(status=st.sampled_from([429, 500, 503]), body=st.text(max_size=30))
def test_complete_429_500_503_are_transient(status, body):
    assert isinstance(classify(status, body), ProviderUnavailable)


@given(
    error=errors.filter(
        lambda e: e not in ("invalid_grant", "temporarily_unavailable", "server_error", "")
    ),
    status=st.sampled_from([400, 401, 403]),
)
def test_other_oauth_errors_are_configuration(error, status):
    assert isinstance(classify(status, json.dumps({"error": error})), ProviderError)


@given(reply=json_values)
def test_normalize_accepts_a_token_or_raises_token_error(reply):
    try:
        token = accept(reply)
    except TokenError:
        return
    assert isinstance(token["access_token"], str) and token["access_token"]


@given(data=st.binary(max_size=200), aad=st.binary(max_size=40), flip=st.integers(0, 10_000))
def test_a_sealed_blob_opens_only_unchanged_and_in_place(data, aad, flip):
    sealer = Sealer(["current", "old"], "test")
    blob = sealer.seal(data, aad)
    assert sealer.open(blob, aad) == (data, True)
    with pytest.raises(SealError):
        sealer.open(blob, aad + b"x")
    body = blob[4:]
    i = flip % len(body)
    changed = body[:i] + ("A" if body[i] != "A" else "B") + body[i + 1 :]
    try:
        opened = sealer.open("tg1." + changed, aad)
    except SealError:
        return
    # base64 without padding can decode a changed last character to the same bytes
    assert opened == (data, True)
