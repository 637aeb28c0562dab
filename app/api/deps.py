"""Dependencies shared by the routes: settings, a database session, the artifact store, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from app.errors import ApiError
from service.artifacts import ArtifactStore, get_store
from service.db import get_engine, session_scope
from service.settings import Settings, get_settings
from service.tenants import Principal, resolve


async def _settings(request: Request) -> Settings:  # async: no I/O, so no thread hop
    return getattr(request.app.state, "settings", None) or get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]


def _session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def _store(settings: SettingsDep) -> ArtifactStore:
    return get_store(settings)


StoreDep = Annotated[ArtifactStore, Depends(_store)]


_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token (when keys are configured)")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (when keys are configured)")


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyDep = Annotated[str | None, Depends(_api_key_header)]


def api_key_token(bearer: HTTPAuthorizationCredentials | None, api_key: str | None) -> bytes:
    """The key a request carries (bearer first), as the UTF-8 bytes it is hashed as: a header with non-ASCII bytes
    is simply a wrong key (401)."""
    token = bearer.credentials if bearer is not None else (api_key or "")
    return token.encode("utf-8", "surrogateescape")


def principal_on(connection: Connection, settings: Settings, token: bytes) -> Principal:
    """The token's principal (`service.tenants.resolve`, read on `connection`), or 401."""
    principal = resolve(connection, settings, token)
    if principal is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "unauthorized",
            "missing, wrong or revoked API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


def _principal(settings: Settings, token: bytes) -> Principal:
    with get_engine(settings).connect() as connection:  # reads only: a connection, no ORM session
        return principal_on(connection, settings, token)


async def require_api_key(settings: SettingsDep, bearer: BearerDep, api_key: ApiKeyDep) -> Principal:
    """Bearer token (or X-API-Key) auth: the key's tenant. With no key configured anywhere, auth is off and every
    request is the default tenant. The lookup runs in one thread hop on a connection of its own (not the route's
    session), so a route that needs no session pays for no more. `GET /v1/jobs/{id}` authenticates inside its own
    read instead (one hop for both)."""
    return await run_in_threadpool(_principal, settings, api_key_token(bearer, api_key))


PrincipalDep = Annotated[Principal, Depends(require_api_key)]
