"""The demo OAuth provider's old home, kept so that existing imports and the command line work.

The provider lives in :mod:`flask_tokenguard.testing.provider` (needs the ``demo`` extra);
``python -m flask_tokenguard.demo_provider --port 5001`` still serves it.
"""

from __future__ import annotations

from typing import Any

from .testing import provider as _provider

__all__ = _provider.__all__
#: Loaded now: importing this module without the demo extra says which extra to install.
main = _provider.main


def __getattr__(name: str) -> Any:
    return getattr(_provider, name)


if __name__ == "__main__":
    raise SystemExit(main())
