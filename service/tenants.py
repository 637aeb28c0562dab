"""Tenants and API keys: who a request is, and which rows it may see.

A key is a high-entropy token shown once at creation; the database keeps only its sha256. A request's key
resolves to a `Principal` (a tenant, and whether it sees every tenant):
- a key in ADMIN_API_KEYS: an admin (its own tenant for what it creates; sees everything);
- a key in API_KEYS: its own tenant, whose id is derived from the key's hash (stable across restarts; two keys
  never share one);
- a key in the database (`onnx-compress keys create`): the tenant it was created for, until it is revoked;
- no key configured anywhere (both settings empty and no key row ever created): auth is off, every request is
  the default tenant and sees everything, as before tenants existed.
Another tenant's resource is reported as missing (404), never as forbidden, so ids are not confirmed to exist.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, Connection, bindparam, exists, select, true
from sqlalchemy.orm import Session

from service.orm import DEFAULT_TENANT, ApiKey, DatasetRecord, Job, ModelRecord, Tenant, utcnow
from service.settings import Settings

TOKEN_PREFIX = "oc_"
TOKEN_BYTES = 32  # 256 bits of randomness per key
TENANT_NAME = r"[a-z0-9][a-z0-9_.-]{0,63}"

Owned = TypeVar("Owned", ModelRecord, DatasetRecord, Job)


class Principal(BaseModel):
    """Who is asking: the tenant that owns what it creates, and whether it sees every tenant's resources."""

    model_config = ConfigDict(frozen=True)

    tenant_id: str
    is_admin: bool = False

    def can_see(self, owner_id: str) -> bool:
        return self.is_admin or secrets.compare_digest(owner_id, self.tenant_id)


AUTH_OFF = Principal(tenant_id=DEFAULT_TENANT, is_admin=True)


class TenantError(ValueError):
    """A tenant or key command that cannot be done as asked (the message says why)."""


class KeyInfo(BaseModel):
    id: str
    tenant: str
    created_at: str
    revoked_at: str | None


def hash_token(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def settings_tenant_id(key_hash: str) -> str:
    """The tenant of a key listed in API_KEYS/ADMIN_API_KEYS: derived from its hash (a separate hash, so the
    owner column never holds the key's hash itself)."""
    return "key-" + hashlib.sha256(b"onnx-compress tenant\0" + key_hash.encode()).hexdigest()[:28]


def _match(given_hash: str, keys: list[str]) -> str | None:
    """The hash of the configured key equal to `given_hash`, comparing every key in constant time."""
    found = None
    for key in keys:
        key_hash = hash_token(key.encode("utf-8"))
        if secrets.compare_digest(given_hash, key_hash):
            found = key_hash
    return found


# built once: every request runs them (SQLAlchemy's compiled cache is keyed on the statement object)
_ANY_KEY = select(exists().select_from(ApiKey))
_LIVE_KEY = select(ApiKey.key_hash, ApiKey.tenant_id).where(
    ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None)
)


def auth_enabled(session: Session | Connection, settings: Settings) -> bool:
    """Auth is on once any key exists: in the settings, or ever created in the database (a revoked last key
    does not turn auth off)."""
    return bool(settings.api_keys or settings.admin_api_keys or session.scalar(_ANY_KEY))


def resolve(session: Session | Connection, settings: Settings, token: bytes | None) -> Principal | None:
    """The principal a token stands for; None for a missing, wrong or revoked key. With no key configured
    anywhere, everyone is `AUTH_OFF`."""
    if not auth_enabled(session, settings):
        return AUTH_OFF
    if not token:
        return None
    given = hash_token(token)
    if (admin := _match(given, settings.admin_api_keys)) is not None:
        return Principal(tenant_id=settings_tenant_id(admin), is_admin=True)
    if (listed := _match(given, settings.api_keys)) is not None:
        return Principal(tenant_id=settings_tenant_id(listed))
    row = session.execute(_LIVE_KEY, {"key_hash": given}).first()
    if row is None or not secrets.compare_digest(row.key_hash, given):
        return None
    return Principal(tenant_id=row.tenant_id)


def visible_to(principal: Principal, owner: ColumnElement[str]) -> ColumnElement[bool]:
    """A WHERE clause keeping the rows `principal` may see."""
    return true() if principal.is_admin else owner == principal.tenant_id


def get_owned(session: Session, kind: type[Owned], row_id: str, principal: Principal) -> Owned | None:
    """The row with this id if `principal` may see it; another tenant's row is None, like a missing one."""
    row = session.get(kind, row_id)
    return row if row is not None and principal.can_see(row.owner_id) else None


# --- the CLI's operations ------------------------------------------------------------------------------------


def create_tenant(session: Session, name: str) -> Tenant:
    if not re.fullmatch(TENANT_NAME, name):
        raise TenantError(f"tenant name {name!r}: use 1-64 of a-z, 0-9, '_', '.', '-' (starting with a letter/digit)")
    if session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
        raise TenantError(f"tenant {name!r} already exists")
    tenant = Tenant(name=name)
    session.add(tenant)
    session.commit()
    return tenant


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.name)))


def create_key(session: Session, tenant_name: str) -> tuple[ApiKey, str]:
    """A new key for the tenant: (its row, the token). The token is not stored; show it once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        raise TenantError(f"no tenant {tenant_name!r}: create it with `onnx-compress tenants create {tenant_name}`")
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    key = ApiKey(tenant_id=tenant.id, key_hash=hash_token(token.encode("utf-8")))
    session.add(key)
    session.commit()
    return key, token


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke a key (its requests get 401 from now on); False if it was already revoked."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise TenantError(f"no key {key_id!r}: `onnx-compress keys list` shows the ids")
    if key.revoked_at is not None:
        return False
    key.revoked_at = utcnow()
    session.commit()
    return True


def list_keys(session: Session) -> list[KeyInfo]:
    rows = session.execute(select(ApiKey, Tenant.name).join(Tenant).order_by(Tenant.name, ApiKey.created_at))
    return [
        KeyInfo(
            id=key.id,
            tenant=name,
            created_at=key.created_at.isoformat(timespec="seconds"),
            revoked_at=key.revoked_at.isoformat(timespec="seconds") if key.revoked_at else None,
        )
        for key, name in rows
    ]
