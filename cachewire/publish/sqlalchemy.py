"""Invalidate when a SQLAlchemy session commits (the `sqlalchemy` extra).

    from cachewire.publish import Publisher
    from cachewire.publish.sqlalchemy import invalidate_after_commit

    publisher = Publisher("http://hub:8080")
    with Session(engine) as session, session.begin():
        session.get(User, 42).name = "Ada"
        invalidate_after_commit(session, publisher, "user:42", keys=["user:42"])
    # committed: the event is in the hub's history now

The invalidations registered in a transaction are published (in one request) when its
outermost transaction commits, and dropped when it ends any other way (rollback, an
exception in `session.begin()`, `close()`), so an aborted transaction never invalidates.
A savepoint (`begin_nested`) rolled back does not drop what was registered inside it: it is
published with the outer commit — an extra invalidation is harmless, a missing one is not.

With `wait=True` (the default) `commit()` returns once the hub stored the events, and
raises the PublishError when it could not within the publisher's retry window — the
database transaction is committed by then: log it, and rely on the sidecar's staleness
bound. With `wait=False` the commit does not wait; a failure is logged. A process that dies
between its commit and the publish loses the invalidation: a transactional outbox is what
closes that gap, and is not provided here.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from cachewire.publish.sync import Publisher, log_failure

_PENDING = "cachewire.pending"  # session.info key: [(publisher, wait, event kwargs), ...]


def invalidate_after_commit(
    session: Session,
    publisher: Publisher,
    type: str,
    *,
    keys: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    data: Any = None,
    flush: bool = False,
    wait: bool = True,
) -> None:
    """Publish this invalidation when the session's transaction commits; never otherwise."""
    if not event.contains(session, "after_commit", _after_commit):
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_transaction_end", _after_transaction_end)
    fields = {"keys": list(keys), "prefixes": list(prefixes), "data": data, "flush": flush}
    session.info.setdefault(_PENDING, []).append((publisher, wait, type, fields))


def _after_commit(session: Session) -> None:
    pending = session.info.pop(_PENDING, [])
    waiting: list[Future[str]] = []
    for publisher, wait, type, fields in pending:  # submitted together: one request
        future = publisher.submit(type, **fields)
        if wait:
            waiting.append(future)
        else:
            future.add_done_callback(log_failure)
    for future in waiting:
        future.result()  # raises the PublishError


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without a commit (after a commit, nothing is left)."""
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
