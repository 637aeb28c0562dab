"""The web console: one static page, its script and its style, served as files (no build step, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

CONSOLE_DIR = Path(__file__).resolve().parent
ASSETS = {"console.js": "text/javascript", "console.css": "text/css"}
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
def console_page() -> FileResponse:
    return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/console/{name}")
def console_asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no console file {name!r}")
    return FileResponse(CONSOLE_DIR / name, media_type=ASSETS[name], headers=NO_CACHE)
