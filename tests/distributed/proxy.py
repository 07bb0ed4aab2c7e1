"""A TCP proxy a test puts between one client and its broker, to cut that client off.

``await cut()`` drops every connection through the proxy (both sockets closed when it
returns) and turns new ones away (accepted and closed at once, as a broker that is gone
would), while the broker stays up for everyone else; ``restore()`` lets the client
connect again. A connection-level fault: the broker sees the client's connection close,
the client sees its connection lost and reconnects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from anyio.abc import SocketAttribute


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port``; ``cut`` and ``restore``."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.open = True
        self._links: set[anyio.CancelScope] = set()
        self._no_links = anyio.Event()
        self._no_links.set()

    def url(self, scheme: str, userinfo: str = "", path: str = "") -> str:
        """The URL a client connects to the broker through the proxy with."""
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}{path}"

    async def cut(self) -> None:
        """Drop every connection through the proxy; turn new ones away until ``restore``.
        Returns once the dropped connections' sockets are closed."""
        self.open = False
        for link in list(self._links):
            link.cancel()
        await self._no_links.wait()

    def restore(self) -> None:
        """Let connections through again."""
        self.open = True

    async def _serve(self, client: anyio.abc.SocketStream) -> None:
        with anyio.CancelScope() as link:
            self._links.add(link)
            if self._no_links.is_set():
                self._no_links = anyio.Event()
            try:
                async with client:
                    if not self.open:
                        return  # turned away: closed at once
                    try:
                        upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
                    except OSError:
                        return  # the broker itself is down: so is the way through
                    async with upstream, anyio.create_task_group() as pumps:
                        pumps.start_soon(_pump, client, upstream, pumps.cancel_scope)
                        pumps.start_soon(_pump, upstream, client, pumps.cancel_scope)
            finally:
                self._links.discard(link)
                if not self._links:
                    self._no_links.set()


async def _pump(
    source: anyio.abc.SocketStream, sink: anyio.abc.SocketStream, both: anyio.CancelScope
) -> None:
    try:
        async for chunk in source:
            await sink.send(chunk)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    both.cancel()  # one side closed: the whole connection ends


@asynccontextmanager
async def tcp_proxy(upstream_port: int) -> AsyncIterator[TcpProxy]:
    """A ``TcpProxy`` to ``127.0.0.1:upstream_port``, serving until the block ends."""
    proxy = TcpProxy(upstream_port)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy.port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, proxy._serve, task_group)
        try:
            yield proxy
        finally:
            with anyio.CancelScope(shield=True):
                await proxy.cut()
            task_group.cancel_scope.cancel()
