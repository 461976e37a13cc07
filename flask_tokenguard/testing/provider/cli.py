"""``python -m flask_tokenguard.demo_provider``: serve the provider until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import sys
import threading

from .config import ProviderConfig, check_loopback_uri, is_loopback
from .server import ProviderServer, exposure_warning

__all__ = ["UNSAFE_FLAG", "main"]

#: The only way to make the command line listen beyond loopback.
UNSAFE_FLAG = "--unsafe-expose-demo-provider"


def _parser(defaults: ProviderConfig) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flask_tokenguard.demo_provider",
        description="Serve the strict demo OAuth provider until Ctrl-C.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help=f"a loopback address (127.0.0.1, localhost, ::1) unless {UNSAFE_FLAG}",
    )
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--access-ttl", type=int, default=defaults.access_ttl)
    parser.add_argument("--client-id", default=defaults.client_id)
    parser.add_argument("--client-secret", default=defaults.client_secret)
    parser.add_argument("--public-client-id", default=defaults.public_client_id)
    parser.add_argument(
        "--redirect-uri",
        action="append",
        dest="redirect_uris",
        help="registered redirect URI (repeatable); loopback URIs are accepted anyway",
    )
    parser.add_argument(
        "--post-logout-redirect-uri",
        action="append",
        dest="post_logout_redirect_uris",
        default=[],
        help="where /end_session may send the browser back to (repeatable); loopback URIs "
        "are accepted anyway",
    )
    parser.add_argument(
        "--backchannel-logout-uri",
        default=None,
        help="the clients' back-channel logout URI (a loopback http URL): it receives a logout "
        "token when a session ends at the provider",
    )
    parser.add_argument("--refresh-delay", type=float, default=defaults.refresh_delay)
    parser.add_argument("--reuse-grace", type=float, default=defaults.reuse_grace)
    parser.add_argument("--invalid-grant-status", type=int, choices=(400, 401, 403), default=400)
    parser.add_argument(
        "--no-rotate", action="store_true", help="keep refresh tokens valid (Google-style)"
    )
    parser.add_argument(
        "--trusted-host",
        action="append",
        dest="trusted_hosts",
        default=[],
        help="another host name clients use to reach the provider (repeatable); a request "
        "with any other Host header gets 400",
    )
    parser.add_argument(
        UNSAFE_FLAG,
        action="store_true",
        dest="unsafe_expose",
        help="allow a non-loopback --host: anyone who reaches the port can log in as anyone; "
        "plain HTTP is then allowed (AUTHLIB_INSECURE_TRANSPORT=1)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, start the provider, print its URLs and wait for Ctrl-C."""
    defaults = ProviderConfig()
    parser = _parser(defaults)
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.unsafe_expose:
        parser.error(
            f"refusing --host {args.host}: not a loopback address. The demo provider approves "
            f"anyone and publishes its client secret; add {UNSAFE_FLAG} to expose it anyway."
        )
    try:
        check_loopback_uri(args.backchannel_logout_uri, "--backchannel-logout-uri")
    except ValueError as error:
        parser.error(str(error))
    config = ProviderConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        public_client_id=args.public_client_id,
        redirect_uris=tuple(args.redirect_uris or defaults.redirect_uris),
        post_logout_redirect_uris=tuple(args.post_logout_redirect_uris),
        backchannel_logout_uri=args.backchannel_logout_uri,
        access_ttl=args.access_ttl,
        rotate=not args.no_rotate,
        reuse_grace=args.reuse_grace,
        invalid_grant_status=args.invalid_grant_status,
        refresh_delay=args.refresh_delay,
    )
    if not is_loopback(args.host):
        # Authlib refuses plain http except on loopback: say so loudly, never silently.
        os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
        banner = "!" * 78
        print(
            f"{banner}\n{exposure_warning(args.host)}\n"
            "Plain HTTP is allowed for it (AUTHLIB_INSECURE_TRANSPORT=1): tokens and the client "
            f"secret cross the network in clear text.\n{banner}",
            file=sys.stderr,
            flush=True,
        )
    server = ProviderServer(
        config,
        host=args.host,
        port=args.port,
        quiet=False,
        unsafe_expose=args.unsafe_expose,
        trusted_hosts=args.trusted_hosts,
    ).start()
    url = server.url
    print(
        f"demo OAuth provider on {url}\n"
        f"  authorize: {url}/authorize   token: {url}/token   userinfo: {url}/userinfo\n"
        f"  OpenID:    {url}/.well-known/openid-configuration   jwks: {url}/jwks\n"
        f"             revoke: {url}/revoke   introspect: {url}/introspect\n"
        f"             end_session: {url}/end_session\n"
        f"  admin:     {url}/_admin/stats  (faults, reset, issue, issued, revoke, logout,\n"
        f"             keys/rotate; loopback only)\n"
        f"  confidential client: {config.client_id} / {config.client_secret}\n"
        f"  public client:       {config.public_client_id} (PKCE S256 always required)\n"
        f"  access tokens live {config.access_ttl} s; refresh tokens rotate: {config.rotate}\n"
        f"  back-channel logout to: {config.backchannel_logout_uri or '(none)'}",
        flush=True,
    )
    try:
        _wait_for_interrupt()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _wait_for_interrupt() -> None:
    threading.Event().wait()
