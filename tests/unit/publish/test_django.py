"""invalidate_on_commit against Django's SQLite backend and a real in-process hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import django
import pytest
from django.conf import settings

from cachewire.hub.server import Hub
from cachewire.publish import Publisher

if not settings.configured:
    settings.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()

from django.db import connection, transaction

from cachewire.publish.django import invalidate_on_commit


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory()


@pytest.fixture
async def publisher(hub: Hub) -> AsyncIterator[Publisher]:
    publisher = Publisher(f"http://127.0.0.1:{hub.http_port}")
    yield publisher
    await asyncio.to_thread(publisher.close, 20)


def scenario(publisher: Publisher) -> list[str]:
    """Run in one thread (Django's connection belongs to it); the names left in the table."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        with transaction.atomic():
            connection.cursor().execute("INSERT INTO users VALUES (1, 'Ada')")
            invalidate_on_commit(publisher, "user:1", keys=["user:1"])
        try:
            with transaction.atomic():
                connection.cursor().execute("INSERT INTO users VALUES (2, 'Bob')")
                invalidate_on_commit(publisher, "user:2", keys=["user:2"])
                raise RuntimeError("aborted")
        except RuntimeError:
            pass
        with transaction.atomic():
            invalidate_on_commit(publisher, "outer")
            try:
                with transaction.atomic():  # a savepoint, rolled back with what it registered
                    invalidate_on_commit(publisher, "in:savepoint")
                    raise RuntimeError("savepoint aborted")
            except RuntimeError:
                pass
            invalidate_on_commit(publisher, "async", wait=False)
        invalidate_on_commit(publisher, "autocommit")  # no transaction: at once
        with connection.cursor() as cursor:
            cursor.execute("SELECT name FROM users ORDER BY id")
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


async def test_committed_transactions_invalidate_and_aborted_ones_never(
    hub: Hub, publisher: Publisher
) -> None:
    before = hub.broker.head_id()
    names = await asyncio.to_thread(scenario, publisher)
    await asyncio.to_thread(publisher.drain, 20)
    assert names == ["Ada"]
    events = (await hub.broker.replay(before)).events
    assert [(e.type, e.keys) for e in events] == [
        ("user:1", ("user:1",)),
        ("outer", ()),
        ("async", ()),
        ("autocommit", ()),
    ]
