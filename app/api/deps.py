"""Dependencies shared by the routes: settings, a database session, the artifact store, auth."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.errors import ApiError
from service.artifacts import ArtifactStore, get_store
from service.db import session_scope
from service.settings import Settings, get_settings


def _settings(request: Request) -> Settings:
    return getattr(request.app.state, "settings", None) or get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]


def _session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def _store(settings: SettingsDep) -> ArtifactStore:
    return get_store(settings)


StoreDep = Annotated[ArtifactStore, Depends(_store)]


_bearer = HTTPBearer(auto_error=False, description="an API key as a bearer token (when API_KEYS is set)")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key (when API_KEYS is set)")


def require_api_key(
    settings: SettingsDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key_header)],
) -> None:
    """Bearer token (or X-API-Key) auth, enabled when API_KEYS is set. Keys are compared as UTF-8 bytes, so a
    header with non-ASCII bytes is simply a wrong key (401)."""
    if not settings.api_keys:
        return
    token = bearer.credentials if bearer is not None else (api_key or "")
    given = token.encode("utf-8", "surrogateescape")
    if not any(secrets.compare_digest(given, key.encode("utf-8")) for key in settings.api_keys):
        raise ApiError(
            status.HTTP_401_UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
