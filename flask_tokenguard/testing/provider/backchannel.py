"""OpenID Connect Back-Channel Logout 1.0: POST a logout token to the client when a session ends.

Deliveries go to loopback URLs only, one fresh connection each, with a bounded timeout and no
redirects followed; the logout token is never logged (the URL and the answer's status are).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import requests

from .config import check_loopback_uri
from .models import Family
from .state import ProviderState

__all__ = ["announce_logout"]

log = logging.getLogger(__name__)


def announce_logout(state: ProviderState, sessions: Iterable[Family], issuer: str) -> int:
    """Send a logout token for each ended session to the back-channel logout URI, if any.

    Returns how many were delivered (answered 2xx); counted as ``backchannel_logouts`` and
    ``backchannel_logout_failures``.
    """
    uri = check_loopback_uri(state.settings.backchannel_logout_uri, "backchannel_logout_uri")
    if uri is None:
        return 0
    delivered = 0
    timeout = state.config.backchannel_logout_timeout
    for family in sessions:
        if _deliver(uri, state.logout_token(family, issuer), timeout):
            delivered += 1
            state.count("backchannel_logouts")
        else:
            state.count("backchannel_logout_failures")
    return delivered


def _deliver(uri: str, logout_token: str, timeout: float) -> bool:
    with requests.Session() as session:
        session.trust_env = False  # never through a proxy from the environment
        try:
            reply = session.post(
                uri,
                data={"logout_token": logout_token},
                headers={"Cache-Control": "no-store"},
                timeout=timeout,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            log.warning("back-channel logout to %s failed: %s", uri, type(error).__name__)
            return False
    if not 200 <= reply.status_code < 300:
        log.warning("back-channel logout to %s answered %s", uri, reply.status_code)
        return False
    return True
