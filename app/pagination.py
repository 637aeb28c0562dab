"""Cursor pagination shared by every list (jobs, models, datasets): newest first, the cursor is the last row's
(created_at, id), so pages stay stable while rows are inserted or deleted."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime
from typing import Any, TypeVar

from fastapi import status
from sqlalchemy import ColumnElement, Select, and_, or_, select
from sqlalchemy.orm import Session

from app.errors import ApiError
from app.schemas import RESOURCE_ID
from service.orm import DatasetRecord, Job, ModelRecord
from service.tenants import Principal, visible_to

Row = TypeVar("Row", Job, ModelRecord, DatasetRecord)


def encode_cursor(row: Any) -> str:
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    padded = cursor + "=" * (-len(cursor) % 4)
    created, row_id = json.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(row_id, str) or not re.fullmatch(RESOURCE_ID, row_id):
        raise ValueError("not a cursor this API made")
    return datetime.fromisoformat(created), row_id


def checked_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    """The decoded cursor; one this API did not make is a 422 saying to pass `next_cursor` unchanged."""
    if not cursor:
        return None
    try:
        return decode_cursor(cursor)
    except Exception as exc:
        raise ApiError(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "invalid_cursor",
            "cursor is not one this API returned: pass next_cursor unchanged",
        ) from exc


def page_query(entity: type[Row], cursor: str | None, limit: int) -> Select[tuple[Row]]:
    """Newest first, one row more than `limit` (to know whether a next page exists), after `cursor`."""
    query = select(entity).order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    after = checked_cursor(cursor)
    if after is not None:
        created, row_id = after
        query = query.where(or_(entity.created_at < created, and_(entity.created_at == created, entity.id < row_id)))
    return query


def fetch_page(
    session: Session,
    entity: type[Row],
    principal: Principal,
    limit: int,
    cursor: str | None,
    *where: ColumnElement[bool],
) -> tuple[list[Row], str | None]:
    """One page of the rows `principal` may see (and `where` keeps): (rows, next_cursor or None)."""
    query = page_query(entity, cursor, limit).where(visible_to(principal, entity.owner_id), *where)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
