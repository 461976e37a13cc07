"""The provider on a real threaded HTTP server, in a background thread of this process."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterable

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from .app import create_provider_app, get_provider_state
from .config import ProviderConfig, is_loopback

__all__ = ["ProviderServer", "UnsafeHostError", "exposure_warning"]

log = logging.getLogger(__name__)

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 (names, not a bind)


class UnsafeHostError(ValueError):
    """A non-loopback address was given without the explicit opt-in to expose the provider."""


def exposure_warning(host: str) -> str:
    """The warning printed and logged when the provider listens beyond loopback."""
    return (
        f"WARNING: the demo OAuth provider listens on {host}, beyond this machine. It approves "
        "anyone at /authorize and publishes its client secret; it is for tests and demos only. "
        "Its admin API still answers loopback clients only."
    )


def _reachable_names(host: str) -> list[str]:
    """Host names a client may use for a server bound to ``host`` (its ``TRUSTED_HOSTS``)."""
    if host not in _WILDCARD_HOSTS:
        return [host]
    return [socket.gethostname(), socket.getfqdn()]


class _QuietRequestHandler(WSGIRequestHandler):
    """No access log lines: tests run thousands of requests; errors are still logged."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


_ID_TOKEN_HINT = re.compile(r"(id_token_hint=)[^&\s]+")


class _AccessLogHandler(WSGIRequestHandler):
    """werkzeug's access log, with the ``id_token_hint`` of ``/end_session`` left out."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        line, path = self.requestline, getattr(self, "path", None)
        self.requestline = _ID_TOKEN_HINT.sub(r"\1[redacted]", line)
        if path is not None:
            self.path = _ID_TOKEN_HINT.sub(r"\1[redacted]", path)
        try:
            super().log_request(code, size)
        finally:
            self.requestline = line
            if path is not None:
                self.path = path


class ProviderServer:
    """The provider on werkzeug's threaded server in a background thread (port 0: a free one).

    Use as a context manager, or ``start()`` / ``stop()``. ``host`` must be a loopback address
    unless ``unsafe_expose=True`` (then a warning is logged); ``trusted_hosts`` adds host names
    the app answers to besides the loopback ones and ``host``. Plain HTTP beyond loopback also
    needs ``AUTHLIB_INSECURE_TRANSPORT=1`` in the environment: this class never sets it.
    """

    def __init__(
        self,
        config: ProviderConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        quiet: bool = True,
        unsafe_expose: bool = False,
        trusted_hosts: Iterable[str] = (),
    ) -> None:
        if not is_loopback(host):
            if not unsafe_expose:
                raise UnsafeHostError(
                    f"refusing to serve the demo OAuth provider on {host!r}: it approves anyone "
                    "and publishes its client secret. Use 127.0.0.1, localhost or ::1; to expose "
                    "it anyway pass unsafe_expose=True (command line: "
                    "--unsafe-expose-demo-provider)."
                )
            log.warning("%s", exposure_warning(host))
        self.config = config or ProviderConfig()
        self.app = create_provider_app(
            self.config, trusted_hosts=[*_reachable_names(host), *trusted_hosts]
        )
        self.state = get_provider_state(self.app)
        self.host = host
        self._port = port
        self._quiet = quiet
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the provider server is not running")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. ``http://127.0.0.1:54321``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ProviderServer:
        if self._server is not None:
            raise RuntimeError("the provider server is already running")
        handler = _QuietRequestHandler if self._quiet else _AccessLogHandler
        server = make_server(
            self.host, self._port, self.app, threaded=True, request_handler=handler
        )
        self._server = server
        if self.config.issuer is None:
            self.state.issuer = self.url  # the ID tokens' iss: the base URL, whatever the Host
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"demo-provider:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self.state.wake_sleepers()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> ProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
