"""flask-tokenguard: one OAuth refresh per refresh token, across threads, processes and hosts.

The names most apps need are here; every error class is in :mod:`flask_tokenguard.errors`.
"""

from .config import ConfigKeys
from .errors import (
    ConfigurationError,
    LoginError,
    Outcome,
    RefreshError,
    StoreError,
    TokenGuardError,
)
from .extension import TokenGuard
from .signals import token_refresh_failed, token_refreshed, user_signed_in
from .token import Token, TokenState

__all__ = [
    "ConfigKeys",
    "ConfigurationError",
    "LoginError",
    "Outcome",
    "RefreshError",
    "StoreError",
    "Token",
    "TokenGuard",
    "TokenGuardError",
    "TokenState",
    "token_refresh_failed",
    "token_refreshed",
    "user_signed_in",
]
