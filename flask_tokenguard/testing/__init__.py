"""Helpers for testing apps that use flask-tokenguard.

``TokenGuardClient`` is a Flask test client signed in with a token (like Flask-Login's
``FlaskLoginClient``). ``ProviderServer`` runs the strict demo OAuth provider on a free port of
127.0.0.1 (needs the ``demo`` extra); ``ProviderHandle`` drives any running one over HTTP (URLs,
credentials, the ``stats()`` oracle with presentation counts, fault switches, ``issue()``,
``login()``, ``refresh()``). Names are loaded on first use; see "Testing your app" in the README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_names

if TYPE_CHECKING:
    from .client import TokenGuardClient
    from .handle import DEFAULT_REDIRECT_URI, ProviderHandle
    from .provider import (
        FAULTS,
        ID_TOKEN_FAULTS,
        ProviderConfig,
        ProviderServer,
        ProviderState,
        UnsafeHostError,
        create_provider_app,
        fingerprint,
        get_provider_state,
    )

_WHERE = {
    "TokenGuardClient": ".client",
    "DEFAULT_REDIRECT_URI": ".handle",
    "ProviderHandle": ".handle",
    "FAULTS": ".provider",
    "ID_TOKEN_FAULTS": ".provider",
    "ProviderConfig": ".provider",
    "ProviderServer": ".provider",
    "ProviderState": ".provider",
    "UnsafeHostError": ".provider",
    "create_provider_app": ".provider",
    "fingerprint": ".provider",
    "get_provider_state": ".provider",
}

__all__ = [
    "DEFAULT_REDIRECT_URI",
    "FAULTS",
    "ID_TOKEN_FAULTS",
    "ProviderConfig",
    "ProviderHandle",
    "ProviderServer",
    "ProviderState",
    "TokenGuardClient",
    "UnsafeHostError",
    "create_provider_app",
    "fingerprint",
    "get_provider_state",
]


__getattr__, __dir__ = lazy_names(__name__, _WHERE)
