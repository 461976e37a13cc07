"""flask-tokenguard: one OAuth refresh per refresh token, across threads, processes and hosts."""

from .config import ConfigKeys
from .errors import (
    ConfigurationError,
    LoginError,
    ProviderConfigurationError,
    RefreshAmbiguous,
    RefreshDefinitive,
    RefreshError,
    RefreshTimeout,
    RefreshTransient,
    StoreError,
    StoreUnavailable,
    TokenError,
    TokenGuardError,
)
from .extension import TokenGuard, current_token
from .signals import token_refresh_failed, token_refreshed

__all__ = [
    "ConfigKeys",
    "ConfigurationError",
    "LoginError",
    "ProviderConfigurationError",
    "RefreshAmbiguous",
    "RefreshDefinitive",
    "RefreshError",
    "RefreshTimeout",
    "RefreshTransient",
    "StoreError",
    "StoreUnavailable",
    "TokenError",
    "TokenGuard",
    "TokenGuardError",
    "current_token",
    "token_refresh_failed",
    "token_refreshed",
]
