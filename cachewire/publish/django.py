"""Invalidate when a Django transaction commits (the `django` extra).

    from cachewire.publish import Publisher
    from cachewire.publish.django import invalidate_on_commit

    publisher = Publisher("http://hub:8080")          # e.g. in your AppConfig.ready()
    with transaction.atomic():
        user.save()
        invalidate_on_commit(publisher, "user:42", keys=["user:42"])

Built on `transaction.on_commit`: the invalidation is published after the outermost
`atomic` block commits, and dropped when it (or the savepoint it was registered in) rolls
back, so an aborted transaction never invalidates. Outside a transaction (autocommit) it is
published at once.

With `wait=True` (the default) the callback returns once the hub stored the event, and
raises the PublishError when it could not within the publisher's retry window (Django
re-raises it from the commit; the data is committed by then). With `wait=False` the commit
does not wait; a failure is logged. A process that dies between its commit and the publish
loses the invalidation (a transactional outbox closes that gap; not provided here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import transaction

from cachewire.publish.sync import Publisher, log_failure


def invalidate_on_commit(
    publisher: Publisher,
    type: str,
    *,
    keys: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    data: Any = None,
    flush: bool = False,
    wait: bool = True,
    using: str | None = None,
) -> None:
    """Publish this invalidation when the current transaction of `using` commits."""
    fields = {"keys": list(keys), "prefixes": list(prefixes), "data": data, "flush": flush}

    def publish() -> None:
        future = publisher.submit(type, **fields)
        if wait:
            future.result()
        else:
            future.add_done_callback(log_failure)

    transaction.on_commit(publish, using=using)
