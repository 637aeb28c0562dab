"""Dependencies shared by the routes: settings, a database session, the artifact store, the caller's tenant."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
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


def _resolve(settings: Settings, token: bytes) -> Principal | None:
    with get_engine(settings).connect() as connection:  # reads only: a connection, no ORM session
        return resolve(connection, settings, token)


async def require_api_key(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> Principal:
    """Bearer token (or X-API-Key) auth: the key's tenant (`service.tenants.resolve`). Keys are hashed as UTF-8
    bytes, so a header with non-ASCII bytes is simply a wrong key (401). With no key configured anywhere, auth is
    off and every request is the default tenant. The lookup runs in one thread hop with a short session of its own
    (not the route's), so a route that needs no session of its own pays for no more."""
    token = bearer.credentials if bearer is not None else (api_key or "")
    principal = await run_in_threadpool(_resolve, settings, token.encode("utf-8", "surrogateescape"))
    if principal is None:
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "unauthorized",
            "missing, wrong or revoked API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(require_api_key)]
