"""invalidate_after_commit against SQLite and a real in-process hub: a committed transaction
always invalidates, an aborted one never does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from cachewire.hub.server import Hub
from cachewire.publish import Publisher
from cachewire.publish.sqlalchemy import invalidate_after_commit


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A SQLite file (the sessions run in worker threads, the checks in this one)."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'app.db'}", connect_args={"check_same_thread": False}
    )
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("INSERT INTO users VALUES (42, 'Ada')"))
    yield engine
    engine.dispose()


@pytest.fixture
async def hub(hub_factory: Callable[..., Any]) -> Hub:
    return await hub_factory()


@pytest.fixture
async def publisher(hub: Hub) -> AsyncIterator[Publisher]:
    publisher = Publisher(f"http://127.0.0.1:{hub.http_port}")
    yield publisher
    await asyncio.to_thread(publisher.close, 20)


async def published(hub: Hub, before: str) -> list[tuple[str, tuple[str, ...]]]:
    return [(e.type, e.keys) for e in (await hub.broker.replay(before)).events]


def rename(engine: Engine, publisher: Publisher, name: str, *, fail: bool = False) -> None:
    with Session(engine) as session, session.begin():
        session.execute(text("UPDATE users SET name = :n WHERE id = 42"), {"n": name})
        invalidate_after_commit(session, publisher, "user:42", keys=["user:42"])
        if fail:
            raise RuntimeError("the request failed after the update")


async def test_a_commit_publishes_and_returns_once_stored(
    hub: Hub, engine: Engine, publisher: Publisher
) -> None:
    before = hub.broker.head_id()
    await asyncio.to_thread(rename, engine, publisher, "Grace")
    # wait=True: the commit returned after the hub stored it; no waiting needed here
    assert await published(hub, before) == [("user:42", ("user:42",))]


async def test_an_exception_in_the_transaction_never_publishes(
    hub: Hub, engine: Engine, publisher: Publisher
) -> None:
    before = hub.broker.head_id()
    with pytest.raises(RuntimeError):
        await asyncio.to_thread(rename, engine, publisher, "Nobody", fail=True)
    await asyncio.to_thread(rename, engine, publisher, "Later")  # the next one goes alone
    assert await published(hub, before) == [("user:42", ("user:42",))]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM users")).scalar() == "Later"


def explicit_paths(engine: Engine, publisher: Publisher) -> None:
    with Session(engine) as session:
        invalidate_after_commit(session, publisher, "rolled:back")
        session.rollback()
        invalidate_after_commit(session, publisher, "closed")
    with Session(engine) as session:  # the closed one's events died with it
        invalidate_after_commit(session, publisher, "a", keys=["a"])
        invalidate_after_commit(session, publisher, "b", prefixes=["b:"], wait=False)
        session.commit()
        session.commit()  # nothing pending: publishes nothing more
        with session.begin():
            invalidate_after_commit(session, publisher, "outer")
            nested = session.begin_nested()
            invalidate_after_commit(session, publisher, "in:savepoint")
            nested.rollback()


async def test_rollback_and_close_drop_what_commit_publishes_in_order(
    hub: Hub, engine: Engine, publisher: Publisher
) -> None:
    before = hub.broker.head_id()
    await asyncio.to_thread(explicit_paths, engine, publisher)
    await asyncio.to_thread(publisher.drain, 20)  # "b" was not waited for
    assert [t for t, _ in await published(hub, before)] == ["a", "b", "outer", "in:savepoint"]
