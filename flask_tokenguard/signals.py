"""Blinker signals on the extension's own namespace, sent with the app as sender.

``token_refreshed`` is sent once per provider refresh, by the request that called the
provider, with ``token=`` the new token (Authlib's ``token_update`` is the model: persist
the token elsewhere from here if you need to). ``token_refresh_failed`` is sent once per
failed provider call, with ``error=`` the :class:`~flask_tokenguard.errors.RefreshError`.
``user_signed_in`` is sent once per completed sign-in (``guard.authorize_callback``), with
``token=`` the token and ``claims=`` what ``guard.user`` now returns: with ``token_refreshed``,
the one hook an app that keeps tokens elsewhere needs.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

token_refreshed = _signals.signal("token-refreshed")
token_refresh_failed = _signals.signal("token-refresh-failed")
user_signed_in = _signals.signal("user-signed-in")
