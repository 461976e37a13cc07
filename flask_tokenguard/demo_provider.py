"""The demo OAuth provider's old home, kept so that existing imports and the command line work.

The provider lives in :mod:`flask_tokenguard.testing.provider` (needs the ``demo`` extra);
``python -m flask_tokenguard.demo_provider --port 5001`` still serves it.
"""

from __future__ import annotations

from .testing.provider import (
    FAULTS,
    ProviderConfig,
    ProviderServer,
    ProviderState,
    UnsafeHostError,
    create_provider_app,
    fingerprint,
    get_provider_state,
    main,
)

__all__ = [
    "FAULTS",
    "ProviderConfig",
    "ProviderServer",
    "ProviderState",
    "UnsafeHostError",
    "create_provider_app",
    "fingerprint",
    "get_provider_state",
    "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
