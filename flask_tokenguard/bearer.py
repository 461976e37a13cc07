"""A ``requests.Session`` that sends a bearer token and survives one refused token.

A 401 to a request that carried the session's token asks for a new token once (the caller's
``renew`` shares that refresh with everyone who saw the same token refused) and retries the
call once. The header is added when a request is prepared, so requests's own redirect
handling strips it on a change of host as usual, and a caller's own ``Authorization`` wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import requests

log = logging.getLogger("flask_tokenguard")

#: Marks a prepared request that carries this session's token.
_SENT = "_tokenguard_bearer"
_AUTHORIZATION = "Authorization"


class BearerSession(requests.Session):
    """Sends ``source()`` as a bearer token; on a 401, ``renew(refused)`` and retry once.

    ``source()`` returns the access token to send (or None: send none); ``renew(refused)``
    returns a token other than ``refused``, or None when there is none to retry with.
    """

    def __init__(
        self,
        source: Callable[[], str | None],
        renew: Callable[[str], str | None],
    ) -> None:
        super().__init__()
        self._source = source
        self._renew = renew

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        prepared = super().prepare_request(request)
        if _AUTHORIZATION not in prepared.headers:
            token = self._source()
            if token:
                prepared.headers[_AUTHORIZATION] = f"Bearer {token}"
                setattr(prepared, _SENT, token)
        return prepared

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        response = super().request(method, url, *args, **kwargs)
        if response.status_code != 401:
            return response
        refused = getattr(response.request, _SENT, None)
        if not isinstance(refused, str) or not _replayable(args, kwargs):
            return response
        fresh = self._renew(refused)
        if not fresh or fresh == refused:
            return response
        log.info("the API refused the access token (401): retrying once with a new one")
        response.close()
        return super().request(method, url, *args, **kwargs)


def _replayable(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the request body can be sent a second time (not a stream nor files)."""
    data = kwargs.get("data", args[1] if len(args) > 1 else None)
    files = kwargs.get("files", args[4] if len(args) > 4 else None)
    return files is None and (data is None or isinstance(data, (str, bytes, dict, list, tuple)))
