"""``flask tokenguard``: commands over the durable grant store (``TOKENGUARD_GRANT_STORE_URL``).

flask tokenguard grants SUBJECT   list a subject's grants: id, created, expires
flask tokenguard revoke GRANT_ID  revoke a stored grant (at the provider too)
flask tokenguard purge            delete the grants whose expiry has passed (--unused-for DAYS)
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING

import click
from flask.cli import AppGroup

from .errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    from .grants import GrantStore


class _Group(AppGroup):
    """Commands whose database fails end with the reason, not a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except StoreError as exc:
            raise click.ClickException(str(exc)) from None


tokenguard_cli = _Group("tokenguard", help="flask-tokenguard: the durable grant store.")


def _store() -> GrantStore:
    from .extension import _app_state

    try:
        return _app_state().guard.grant_store()
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from None


def _when(value: datetime.datetime | None) -> str:
    return "never" if value is None else value.isoformat(timespec="seconds")


@tokenguard_cli.command("grants")
@click.argument("subject")
def grants_command(subject: str) -> None:
    """List SUBJECT's stored grants: id, created, expires (times in UTC)."""
    found = _store().list(subject)
    if not found:
        click.echo(f"no grants for {subject}")
        return
    for grant in found:
        created, expires = _when(grant.created_at), _when(grant.expires_at)
        click.echo(f"{grant.grant_id}\tcreated {created}\texpires {expires}")


@tokenguard_cli.command("revoke")
@click.argument("grant_id")
def revoke_command(grant_id: str) -> None:
    """Revoke the stored grant GRANT_ID: delete it, end the session signed in with it, and
    revoke its refresh token at the provider (where it has a revocation endpoint)."""
    from .extension import _app_state

    _store()  # a missing setting is a usage error
    if not _app_state().guard.revoke_grant(grant_id):
        raise click.ClickException(f"no grant {grant_id}")
    click.echo(f"revoked {grant_id}")


@tokenguard_cli.command("purge")
@click.option(
    "--unused-for",
    type=click.FloatRange(min=0, min_open=True),
    metavar="DAYS",
    help="Also delete the grants not signed in with or refreshed for DAYS days.",
)
def purge_command(unused_for: float | None) -> None:
    """Delete the stored grants whose expiry has passed (and, with --unused-for, the idle ones)."""
    store = _store()
    count = store.purge_expired()
    click.echo(f"purged {count} expired grant{'' if count == 1 else 's'}")
    if unused_for is not None:
        before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=unused_for)
        idle = store.purge_unused(before)
        click.echo(f"purged {idle} grant{'' if idle == 1 else 's'} unused for {unused_for:g} days")
