"""A web app whose in-process cachetools cache is kept invalidated by the pod's sidecar.

Run the three parts (each in its own terminal, or with `&`)::

    cachewire hub
    cachewire sidecar --hub 127.0.0.1:50051 --topics user --relay-port 7070 --health-port 8091
    python examples/app.py --port 8000 --relay 127.0.0.1:7070 --hub-url http://127.0.0.1:8080

    curl localhost:8000/users/42                           # a miss: loaded, then cached
    curl -X PUT localhost:8000/users/42 -d '{"name": "Ada"}'  # write + publish user:42
    curl localhost:8000/users/42                           # loaded again: the entry was deleted
    curl localhost:8000/stats

Start several app processes on one database (`--db`) to see each one's cache invalidated
by a write made through any of them. The users table lives in SQLite, standing in for
the app's real database.

This app is asynchronous, so its Invalidator runs as a task of the app's event loop. A
sync app (Flask, Django, a WSGI worker) calls `Invalidator(...).start()` instead: the same
class, in a background thread with its own gRPC channel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Sequence
from typing import Any

import cachetools
from aiohttp import web

from cachewire.publish import AsyncPublisher, PublishError
from cachewire.sidecar.client import Invalidator

User = dict[str, Any]
INVALIDATOR = web.AppKey("invalidator", Invalidator)
SETTINGS = web.AppKey("settings", argparse.Namespace)
PUBLISHER = web.AppKey("publisher", AsyncPublisher)


class Users:
    """The "database": a SQLite file that several app processes share."""

    def __init__(self, path: str) -> None:
        self.path = path
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def get(self, user_id: int) -> User | None:
        with contextlib.closing(self._connect()) as db:
            row = db.execute("SELECT id, name FROM users WHERE id = ?", (user_id,)).fetchone()
        return {"id": row[0], "name": row[1]} if row else None

    def put(self, user_id: int, name: str) -> None:
        with contextlib.closing(self._connect()) as db, db:
            db.execute("INSERT OR REPLACE INTO users (id, name) VALUES (?, ?)", (user_id, name))


def make_app(settings: argparse.Namespace) -> web.Application:
    users = Users(settings.db)
    # Entries also expire after an hour: a backstop, not the invalidation mechanism.
    cache: cachetools.TTLCache[str, User | None] = cachetools.TTLCache(maxsize=10_000, ttl=3600)
    invalidator = Invalidator(settings.relay, topics=["user"], cache=cache)
    loads: list[int] = []

    # Like cachetools.cached, but a value read before an invalidation of user:<id> arrived
    # is returned to this caller and not stored. Absent users (None) are cached too, and
    # invalidated like the others when they are created.
    @invalidator.cached(key=lambda user_id: f"user:{user_id}")
    async def load_user(user_id: int) -> User | None:
        loads.append(user_id)
        return await asyncio.to_thread(users.get, user_id)

    async def get_user(request: web.Request) -> web.Response:
        user = await load_user(user_id(request))
        if user is None:
            return web.json_response({"error": "no such user"}, status=404)
        return web.json_response(user)

    async def put_user(request: web.Request) -> web.Response:
        uid = user_id(request)
        try:
            body = await request.json()
            name = body["name"]
            if not isinstance(name, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'the body must be {"name": "..."}'}, status=400)
        await asyncio.to_thread(users.put, uid, name)
        # Publish after the write is committed: every pod's caches drop user:<id>.
        event_id = await publish(request.app, f"user:{uid}", [f"user:{uid}"])
        # Read your own write: wait (briefly) until this process's cache has applied it.
        try:
            async with asyncio.timeout(settings.applied_timeout):
                await invalidator.wait_applied_async(event_id)
            applied = True
        except TimeoutError:
            applied = False
        return web.json_response({"id": uid, "event_id": event_id, "applied": applied})

    async def stats(request: web.Request) -> web.Response:
        with invalidator.lock:
            size = len(invalidator.cache)
        return web.json_response(
            {
                "connected": invalidator.connected,
                "position": invalidator.position,
                "cache_size": size,
                "loads": len(loads),
                "discarded": invalidator.guard.discarded,
            }
        )

    app = web.Application()
    app[SETTINGS] = settings
    app[INVALIDATOR] = invalidator
    app.cleanup_ctx.append(background)
    app.router.add_get("/users/{id}", get_user)
    app.router.add_put("/users/{id}", put_user)
    app.router.add_get("/stats", stats)
    return app


def user_id(request: web.Request) -> int:
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise web.HTTPBadRequest(
            text='{"error": "the user id must be an integer"}', content_type="application/json"
        ) from None


async def background(app: web.Application) -> AsyncIterator[None]:
    """The invalidator's task and the publisher (its connection) live as long as the app."""
    # A short retry window: a request waits for it (a worker would retry for longer).
    publisher = AsyncPublisher(app[SETTINGS].hub_url, retry_for=3.0)
    async with publisher, app[INVALIDATOR]:
        app[PUBLISHER] = publisher
        yield


async def publish(app: web.Application, event_type: str, keys: list[str]) -> str:
    """Publish one invalidation (batched with concurrent requests' and retried safely by
    cachewire.publish); its id, or a 502 for the client if the hub refuses or stays down."""
    try:
        return await app[PUBLISHER].publish(event_type, keys=keys)
    except PublishError as exc:
        error = str(exc)
    # The write is committed but not published: say so; the caller must retry the publish.
    raise web.HTTPBadGateway(text=json.dumps({"error": error}), content_type="application/json")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--relay",
        default="127.0.0.1:7070",
        help="the sidecar's relay (or the hub's gRPC port), HOST:PORT",
    )
    parser.add_argument(
        "--hub-url", default="http://127.0.0.1:8080", help="the hub's HTTP address, to publish to"
    )
    parser.add_argument("--db", default="users.db", help="SQLite file holding the users")
    parser.add_argument(
        "--applied-timeout",
        type=float,
        default=2.0,
        help="seconds a PUT waits for its invalidation to reach this cache",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    web.run_app(make_app(settings), host=settings.host, port=settings.port, print=None)


if __name__ == "__main__":
    main()
