"""Dependencies shared by the routes: settings, a database session, the artifact store, auth."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session

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


def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Bearer token (or X-API-Key) auth, enabled when API_KEYS is set."""
    if not settings.api_keys:
        return
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    if not any(secrets.compare_digest(token, key) for key in settings.api_keys):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing or wrong API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
