"""Durable grant storage: users' tokens kept in a SQL database, sealed, across restarts.

The building block for work done on a user's behalf without a request (a background job that
refreshes a user's token). Rows are written through SQLAlchemy Core, in one table that is
created when missing (``CREATE TABLE IF NOT EXISTS`` semantics: no migrations)::

    tokenguard_grants
      grant_id        VARCHAR(64)  primary key; random: 48 hex digits (safe on a command line)
      subject_digest  CHAR(64)     SHA-256 over a purpose label, the client id and the subject
      sealed          TEXT         the sealed record {"subject": ..., "token": {...}, "link": ...}
      version         INTEGER      1 on insert, +1 on every replace (compare-and-set)
      created_at      TIMESTAMP WITH TIME ZONE (UTC)
      updated_at      TIMESTAMP WITH TIME ZONE (UTC)
      expires_at      TIMESTAMP WITH TIME ZONE (UTC), NULL: does not expire
      index on subject_digest, index on expires_at

The subject is never stored in clear: a provider's ``sub`` names a person, so the table keeps
its digest (pseudonymous, not secret: a known subject can be looked up, which is what
:meth:`GrantStore.list` does) and the subject itself only inside the sealed record. The
record is sealed with AES-256-GCM (:class:`~flask_tokenguard.sealing.Sealer`, purpose
``grants``), with the table name and the grant id as associated data: a database dump opens
nothing, a sealed value moved to another row does not open, and a row whose digest was changed
to another subject's is not listed under it.

Needs SQLAlchemy 2 and, for PostgreSQL, psycopg 3: ``pip install "flask-tokenguard[sql]"``.
"""

from __future__ import annotations

import builtins
import datetime
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from .errors import StoreUnavailable, TokenError
from .keys import digest
from .sealing import Sealer, SealError
from .token import Token, restore

try:
    import sqlalchemy as sa
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import DBAPIError, OperationalError
except ImportError as exc:  # pragma: no cover - exercised in a subprocess
    raise ImportError(
        f"flask_tokenguard.grants needs SQLAlchemy 2: pip install 'flask-tokenguard[sql]' ({exc})"
    ) from exc

log = logging.getLogger("flask_tokenguard")

#: The default table name.
TABLE = "tokenguard_grants"
#: The sealing purpose label of grant records (a key of its own, derived from the secret).
PURPOSE = "grants"
_UTC = datetime.timezone.utc

P = ParamSpec("P")
R = TypeVar("R")


def _database(method: Callable[P, R]) -> Callable[P, R]:
    """A database that fails (down, refused, timed out) is a StoreUnavailable, like a shared
    store that fails: callers handle one kind of error. The message names the driver's error
    class only (SQLAlchemy's own messages carry the statement and its parameters)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except DBAPIError as exc:
            cause = type(exc.orig).__name__ if exc.orig is not None else type(exc).__name__
            raise StoreUnavailable(f"the grant store's database failed ({cause})") from exc

    return wrapper


@dataclass(frozen=True)
class GrantLink:
    """Where a signed-in grant lives while it is in use: its session's ticket (the id and the
    secret that open the token record in the shared store) and its session at the provider."""

    ticket_id: str = field(repr=False)
    secret: str = field(repr=False)
    sid: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.ticket_id, "k": self.secret, "sid": self.sid}

    @classmethod
    def from_json(cls, value: Any) -> GrantLink | None:
        if not isinstance(value, dict):
            return None
        ticket_id, secret, sid = value.get("id"), value.get("k"), value.get("sid")
        if not isinstance(ticket_id, str) or not isinstance(secret, str):
            return None
        return cls(ticket_id, secret, sid if isinstance(sid, str) else None)


@dataclass(frozen=True)
class StoredGrant:
    """One stored grant, opened."""

    grant_id: str
    subject: str = field(repr=False)
    token: Token = field(repr=False)
    version: int
    created_at: datetime.datetime
    updated_at: datetime.datetime
    expires_at: datetime.datetime | None
    #: the session it was signed in with (``TOKENGUARD_OFFLINE_GRANTS``); None when stored by hand
    link: GrantLink | None = None


def engine_url(url: str) -> str:
    """``url`` with a driver: ``postgresql://`` and ``postgres://`` use psycopg 3."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


#: Seconds to wait for a connection to a database given by URL (PostgreSQL): a host that
#: does not answer must not hold a request that writes a grant for minutes.
CONNECT_TIMEOUT = 5


def _engine(url: str) -> Engine:
    url = engine_url(url)
    if url.startswith("postgresql+psycopg://"):
        return sa.create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT})
    return sa.create_engine(url)


def when(value: datetime.datetime | float | None) -> datetime.datetime | None:
    """A UTC datetime from a datetime (naive counts as UTC) or epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)
    return datetime.datetime.fromtimestamp(float(value), _UTC)


def grant_expiry(token: Token) -> datetime.datetime | None:
    """When a grant stops being usable, if the provider said: ``refresh_expires_at``, or
    ``refresh_expires_in`` (Keycloak) counted from now; None otherwise."""
    for key, base in (("refresh_expires_at", 0.0), ("refresh_expires_in", time.time())):
        value = token.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return when(base + float(value))
    return None


class GrantStore:
    """Users' grants in one SQL table; every row sealed.

    ``GrantStore(engine_or_url, client_id=..., sealer=Sealer(secrets, "grants"))``; the table
    is created if missing. ``engine_or_url``: an SQLAlchemy ``Engine`` (Flask-SQLAlchemy's
    ``db.engine``) or a URL (``postgresql://...``, ``sqlite:///...``).
    """

    def __init__(
        self,
        engine: Engine | str,
        *,
        client_id: str,
        sealer: Sealer,
        table: str = TABLE,
    ) -> None:
        self.engine = _engine(engine) if isinstance(engine, str) else engine
        self.client_id = client_id
        self.sealer = sealer
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            table,
            self.metadata,
            sa.Column("grant_id", sa.String(64), primary_key=True),
            sa.Column("subject_digest", sa.String(64), nullable=False, index=True),
            sa.Column("sealed", sa.Text, nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
            sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True, index=True),
        )
        self._create()

    def __repr__(self) -> str:
        return f"<GrantStore {self.engine.url.render_as_string(hide_password=True)} {self.table}>"

    @_database
    def _create(self) -> None:
        """Create the table if missing; a concurrent creator elsewhere is no error."""
        for attempt in range(3):
            try:
                self.metadata.create_all(self.engine, checkfirst=True)
                return
            except OperationalError:
                raise  # not reached, refused, timed out: no point in asking again now
            except DBAPIError:
                if attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))

    # -- operations ------------------------------------------------------------------------

    @_database
    def put(
        self,
        subject: str,
        token: Token,
        *,
        expires_at: datetime.datetime | float | None = None,
        grant_id: str | None = None,
        link: GrantLink | None = None,
    ) -> str:
        """Store a new grant for ``subject``; its id (random unless given).

        ``expires_at``: when to purge it; by default from the token's ``refresh_expires_at``
        or ``refresh_expires_in``, else never. ``link``: the session it was signed in with.
        """
        token = restore(token)
        # 48 hex digits: never starts with "-", so `flask tokenguard revoke ID` reads it
        grant_id = grant_id or secrets.token_hex(24)
        now = datetime.datetime.now(_UTC)
        with self.engine.begin() as conn:
            conn.execute(
                self.table.insert().values(
                    grant_id=grant_id,
                    subject_digest=self.subject_digest(subject),
                    sealed=self._seal(grant_id, subject, token, link),
                    version=1,
                    created_at=now,
                    updated_at=now,
                    expires_at=when(expires_at) or grant_expiry(token),
                )
            )
        return grant_id

    @_database
    def get(self, grant_id: str) -> StoredGrant | None:
        """The grant, or None when there is none (or its row does not open: logged)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(self.table).where(self.table.c.grant_id == grant_id)
            ).first()
        return None if row is None else self._open(row)

    @_database
    def list(self, subject: str) -> builtins.list[StoredGrant]:
        """The subject's grants, oldest first (rows that do not open are logged and left out)."""
        query = (
            sa.select(self.table)
            .where(self.table.c.subject_digest == self.subject_digest(subject))
            .order_by(self.table.c.created_at, self.table.c.grant_id)
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        opened = (self._open(row) for row in rows)
        return [grant for grant in opened if grant is not None and grant.subject == subject]

    @_database
    def replace(
        self,
        grant_id: str,
        expected_version: int,
        token: Token,
        *,
        expires_at: datetime.datetime | float | None = None,
    ) -> bool:
        """Write ``token`` if the row is still at ``expected_version`` (compare-and-set).

        False on a version mismatch or a missing row: someone else wrote first; read again.
        """
        token = restore(token)
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(self.table.c.sealed).where(
                    self.table.c.grant_id == grant_id,
                    self.table.c.version == expected_version,
                )
            ).first()
            if row is None:
                return False
            opened = self._unseal(grant_id, row.sealed)
            if opened is None:
                return False
            subject, _old, link = opened
            values: dict[str, Any] = {
                "sealed": self._seal(grant_id, subject, token, link),
                "version": expected_version + 1,
                "updated_at": datetime.datetime.now(_UTC),
            }
            expiry = when(expires_at) or grant_expiry(token)
            if expiry is not None:
                values["expires_at"] = expiry
            result = conn.execute(
                self.table.update()
                .where(
                    self.table.c.grant_id == grant_id,
                    self.table.c.version == expected_version,
                )
                .values(**values)
            )
            return result.rowcount == 1

    def advance(self, grant_id: str, previous_refresh_token: str | None, token: Token) -> bool:
        """Write ``token`` if the row still holds ``previous_refresh_token``: the next link of
        the rotation chain, never an older one (writes that arrive out of order do nothing).

        False when the row holds another refresh token, or is gone.
        """
        grant = self.get(grant_id)
        if grant is None or grant.token.get("refresh_token") != previous_refresh_token:
            return False
        return self.replace(grant_id, grant.version, token)

    @_database
    def delete(self, grant_id: str) -> bool:
        """Remove one grant; whether it was there."""
        with self.engine.begin() as conn:
            result = conn.execute(self.table.delete().where(self.table.c.grant_id == grant_id))
        return result.rowcount == 1

    @_database
    def delete_subject(self, subject: str) -> int:
        """Remove every grant of ``subject``; how many."""
        digest_ = self.subject_digest(subject)
        with self.engine.begin() as conn:
            result = conn.execute(self.table.delete().where(self.table.c.subject_digest == digest_))
        return int(result.rowcount)

    @_database
    def purge_expired(self, now: datetime.datetime | float | None = None) -> int:
        """Remove the grants whose ``expires_at`` has passed at ``now`` (default: now); how many."""
        moment = when(now) or datetime.datetime.now(_UTC)
        with self.engine.begin() as conn:
            result = conn.execute(
                self.table.delete().where(
                    self.table.c.expires_at.is_not(None), self.table.c.expires_at <= moment
                )
            )
        return int(result.rowcount)

    @_database
    def purge_unused(self, before: datetime.datetime | float) -> int:
        """Remove the grants not written (signed in, or refreshed) since ``before``; how many.

        For grants the provider gave no expiry: a session abandoned on some device leaves one.
        """
        moment = when(before)
        with self.engine.begin() as conn:
            result = conn.execute(self.table.delete().where(self.table.c.updated_at <= moment))
        return int(result.rowcount)

    def close(self) -> None:
        self.engine.dispose()

    # -- sealing ---------------------------------------------------------------------------

    def subject_digest(self, subject: str) -> str:
        return digest("grant-subject", self.client_id, subject)

    def _aad(self, grant_id: str) -> bytes:
        return f"{self.table.name}\0{grant_id}".encode()

    def _seal(self, grant_id: str, subject: str, token: Token, link: GrantLink | None) -> str:
        record: dict[str, Any] = {"subject": subject, "token": token}
        if link is not None:
            record["link"] = link.to_json()
        data = json.dumps(record, separators=(",", ":"))
        return self.sealer.seal(data.encode("utf-8"), self._aad(grant_id))

    def _unseal(self, grant_id: str, sealed: str) -> tuple[str, Token, GrantLink | None] | None:
        try:
            data, _current = self.sealer.open(sealed, self._aad(grant_id))
            record = json.loads(data)
            subject = record["subject"]
            token = restore(record["token"])
        except (SealError, ValueError, KeyError, TypeError, TokenError, RecursionError) as exc:
            log.warning("ignoring a stored grant that does not open: %s", exc)
            return None
        if not isinstance(subject, str):
            log.warning("ignoring a malformed stored grant")
            return None
        return subject, token, GrantLink.from_json(record.get("link"))

    def _open(self, row: Any) -> StoredGrant | None:
        opened = self._unseal(row.grant_id, row.sealed)
        if opened is None:
            return None
        subject, token, link = opened
        if self.subject_digest(subject) != row.subject_digest:
            log.warning("ignoring a stored grant whose subject digest was changed")
            return None
        created, updated = when(row.created_at), when(row.updated_at)
        assert created is not None and updated is not None
        return StoredGrant(
            grant_id=row.grant_id,
            subject=subject,
            token=token,
            version=int(row.version),
            created_at=created,
            updated_at=updated,
            expires_at=when(row.expires_at),
            link=link,
        )


def open_grant_store(
    target: str | Engine | Callable[[], Engine], *, client_id: str, sealer: Sealer
) -> GrantStore:
    """A :class:`GrantStore` from ``TOKENGUARD_GRANT_STORE_URL``'s value: a URL, an Engine, or
    a callable returning one (``lambda: db.engine`` with Flask-SQLAlchemy). ``sealer``: purpose
    :data:`PURPOSE`."""
    engine = target if isinstance(target, (str, Engine)) else target()
    return GrantStore(engine, client_id=client_id, sealer=sealer)
