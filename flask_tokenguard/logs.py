"""Keeping secrets out of logs, the dependencies' DEBUG logs included.

requests-oauthlib logs the refresh request body (with the refresh token) and the provider's
reply (with the new tokens) at DEBUG, and ``OAuth2Session`` logs "Adding token %s" on every
API call. A filter on those loggers replaces the arguments of such records before any
handler sees them (a logger's filters run before propagation to the root's handlers).
"""

from __future__ import annotations

import logging

log = logging.getLogger("flask_tokenguard")

#: Loggers that format request bodies, responses or tokens into DEBUG records.
NOISY_LOGGERS = (
    "requests_oauthlib",
    "requests_oauthlib.oauth2_session",
    "requests_oauthlib.oauth2_auth",
)

_REDACTED = "[arguments redacted by flask_tokenguard]"


class RedactArguments(logging.Filter):
    """Keep the record (its template says what happened), drop its arguments.

    The template is not %-formatted afterwards, so ``%d`` and the like stay harmless.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = f"{record.msg} {_REDACTED}"
            record.args = ()
        elif not isinstance(record.msg, str):
            record.msg = _REDACTED
        return True


_FILTER = RedactArguments()


def install_redaction() -> None:
    """Idempotent: attach the filter to every logger that can print a token."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
