"""Lua scripts on Redis, for the policies shared by a fleet (``RateLimit`` and
``TokenBudget`` with ``store="redis://..."``): connections by URL and event loop, each round
trip bounded by a timeout. Under Trio the asyncio Redis client runs on the runtime's asyncio
helper loop, as the distributed transport does."""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import sniffio

from ..errors import InvalidStateError, InvalidValueError, MissingDependencyError

__all__ = ["RedisScripts", "check_store", "redacted", "store_errors", "text"]


class RedisScripts:
    """Named Lua scripts, run on a client per (event loop, URL).

    Args:
        scripts: The scripts' texts, by name.
        owner: What needs Redis, for the messages of what it lacks.

    Under Trio the client runs on ``bridge()``'s loop, the runtime's asyncio helper loop,
    which the runtime lends (``use_bridge``).
    """

    def __init__(self, scripts: Mapping[str, str], owner: str) -> None:
        self._texts = dict(scripts)
        self._owner = owner
        self.bridge: Callable[[], Any] | None = None
        #: Per asyncio loop (the caller's, or the bridge's under Trio): (client, scripts) by URL.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, tuple[Any, dict[str, Any]]]
        ] = weakref.WeakKeyDictionary()

    def _scripts(self, url: str, timeout: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        clients = self._clients.get(loop)
        if clients is None:
            clients = self._clients[loop] = {}
        known = clients.get(url)
        if known is None:
            try:
                import redis.asyncio as aioredis
            except ModuleNotFoundError as exc:
                raise MissingDependencyError(
                    f"{self._owner} needs the 'redis' package; install it with: "
                    "pip install 'murmur-agents[redis]'",
                    name="redis",
                ) from exc
            client = aioredis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
            scripts = {name: client.register_script(body) for name, body in self._texts.items()}
            known = clients[url] = (client, scripts)
        return known[1]

    async def _script(
        self, url: str, seconds: float, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        script = self._scripts(url, seconds)[name]
        with anyio.fail_after(seconds):
            return await script(keys=keys, args=args)

    async def run(
        self, url: str, seconds: float, name: str, keys: list[str], args: list[Any]
    ) -> Any:
        """One script call, in at most ``seconds``.

        Raises:
            OSError, TimeoutError, redis.RedisError: the store did not answer in time.
        """
        if sniffio.current_async_library() == "asyncio":
            return await self._script(url, seconds, name, keys, args)
        if self.bridge is None:
            raise InvalidStateError(
                f"{self._owner} needs an asyncio loop under Trio: use it through an "
                "AgentRuntime (RuntimeOptions), which lends its own"
            )
        return await self.bridge().run(self._script, url, seconds, name, keys, args)

    async def aclose(self) -> None:
        """Close the connections (on their loops)."""
        clients = [(loop, c) for loop, by_url in self._clients.items() for c, _ in by_url.values()]
        self._clients = weakref.WeakKeyDictionary()
        for loop, client in clients:
            if loop.is_closed():
                continue
            try:
                if sniffio.current_async_library() == "asyncio":
                    if loop is asyncio.get_running_loop():
                        await client.aclose()
                elif self.bridge is not None:
                    await self.bridge().run(client.aclose)
            except (OSError, RuntimeError):
                pass


def check_store(owner: str, store: Any, on_store_error: Any, store_timeout: Any) -> None:
    """Refuse ``owner``'s store options that are not a Redis URL (or ``None``),
    ``"closed"`` or ``"open"``, and seconds > 0."""
    if store is not None and (
        not isinstance(store, str) or not store.startswith(("redis://", "rediss://"))
    ):
        shown = redacted(store) if isinstance(store, str) else store
        raise InvalidValueError(
            f"{owner} store must be None or a redis:// or rediss:// URL, got {shown!r}"
        )
    if on_store_error not in ("closed", "open"):
        raise InvalidValueError(
            f"{owner} on_store_error must be 'closed' or 'open', got {on_store_error!r}"
        )
    if (
        isinstance(store_timeout, bool)
        or not isinstance(store_timeout, (int, float))
        or not 0 < store_timeout < math.inf
    ):
        raise InvalidValueError(
            f"{owner} store_timeout must be seconds > 0 (finite), got {store_timeout!r}"
        )


def redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def text(value: Any) -> str:
    """A Redis reply as ``str``."""
    return value.decode() if isinstance(value, bytes) else str(value)


def store_errors() -> tuple[type[Exception], ...]:
    """What a round trip to an unreachable or silent store raises."""
    try:
        from redis.exceptions import RedisError
    except ModuleNotFoundError:  # pragma: no cover - the client import fails first
        return (OSError, TimeoutError)
    return (OSError, TimeoutError, RedisError)
