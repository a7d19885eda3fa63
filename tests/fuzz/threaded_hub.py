"""A hub on its own event loop in a thread, for Hypothesis tests (which are synchronous):
they talk to it over real sockets with blocking clients, as any client would."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from cachewire.hub.server import Hub
from cachewire.hub.settings import HubSettings


class ThreadedHub:
    def __init__(self, **settings: Any) -> None:
        self.hub = Hub(HubSettings(**{"http_port": 0, "grpc_port": 0, **settings}))
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.hub.start())
        self._started.set()
        self.loop.run_forever()

    def start(self) -> ThreadedHub:
        self._thread.start()
        if not self._started.wait(20):
            raise TimeoutError("the hub did not start")
        return self

    def call(self, coro: Any) -> Any:
        """Run a coroutine on the hub's loop; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(20)

    def head(self) -> str:
        async def head() -> str:
            return self.hub.broker.head_id()

        return str(self.call(head()))

    def stop(self) -> None:
        self.call(self.hub.stop(0.5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(20)
        self.loop.close()
