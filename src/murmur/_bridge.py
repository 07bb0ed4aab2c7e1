"""An asyncio event loop in a helper thread, for asyncio-only work called from Trio.

pydantic-ai (and FastStream) need a running asyncio loop. Under Trio the runtime hands
such calls to this bridge. Guarantees:

* cancelling the Trio caller cancels the asyncio task, and the caller returns only once
  that task has really finished (nothing outlives the call);
* an exception raised on the asyncio side is re-raised on the Trio side;
* ``close()`` stops the loop and joins the thread; no call can be left waiting.

A coroutine submitted from Trio inherits Trio's context, including sniffio's
"current async library" variable; left as is, asyncio-side code (anyio, pydantic-ai)
would believe it runs under Trio. It is reset to "asyncio" before the work starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import anyio
import anyio.abc
import sniffio

from ._cancellation import stray_cancellation
from .errors import RuntimeClosedError

__all__ = ["AsyncioBridge", "HomePortal"]

T = TypeVar("T")


class _Call:
    """One call's state, touched only on the loop thread once submitted."""

    __slots__ = ("cancel_requested", "error", "task", "value", "wake")

    def __init__(self, wake: Callable[[], None]) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False
        self.value: Any = None
        self.error: BaseException | None = None
        #: Tells the waiting caller the call is over; callable from any thread, repeatable.
        self.wake = wake

    def cancel(self) -> None:
        """Ask the asyncio side to stop; runs on the loop thread."""
        self.cancel_requested = True
        if self.task is not None:
            self.task.cancel()


class AsyncioBridge:
    """A private asyncio loop in a daemon thread; started lazily, stopped by ``close()``."""

    def __init__(self, name: str = "murmur-asyncio-bridge") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._calls: set[_Call] = set()

    @property
    def thread(self) -> threading.Thread | None:
        """The loop thread, once started."""
        return self._thread

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The bridge's loop, once started."""
        return self._loop

    def _submit(self, call: _Call, coro: Awaitable[None]) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                coro.close()  # type: ignore[attr-defined]
                raise RuntimeClosedError("the runtime's asyncio bridge is closed")
            if self._loop is None:
                # In a fresh context: the loop's self-pipe handle keeps the context it was
                # made in, which would otherwise pin the caller's task (and its runtime).
                loop = contextvars.Context().run(asyncio.new_event_loop)
                thread = threading.Thread(
                    target=self._run_loop, args=(loop,), name=self._name, daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
            self._calls.add(call)
            asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
            return self._loop

    def _run_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop thread. ``close()`` stops the loop; anything else stopping it is death."""
        death: BaseException | None = None
        try:
            loop.run_forever()
        except BaseException as exc:  # carried to every waiting caller, re-raised there
            death = exc
        if death is None:
            return
        # A SystemExit or KeyboardInterrupt raised in a task on this loop (asyncio re-raises
        # those out of the loop) stopped it. Every call still on it gets that exception,
        # and the next call starts a fresh loop.
        with self._lock:
            calls = list(self._calls)
            self._calls.clear()
            if self._loop is loop:
                self._loop = self._thread = None
        for call in calls:
            if call.error is None:
                call.error = death
            # A call submitted just as the loop died must not start during the clean-up.
            call.cancel_requested = True
            call.wake()
        # Give what was left on the loop its cancellation and clean-up, then close it.
        with contextlib.suppress(BaseException):
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the bridge loop and wait for it from Trio."""
        import trio

        token = trio.lowlevel.current_trio_token()
        done = anyio.Event()

        def wake() -> None:
            # The caller's Trio run may be over already (then nobody waits any more).
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        call = _Call(wake)

        async def on_loop() -> None:
            sniffio.current_async_library_cvar.set("asyncio")
            task = call.task = cast("asyncio.Task[Any]", asyncio.current_task())
            # Wake the Trio side only once the task is over, not from its `finally`: by then
            # the loop no longer runs this coroutine, so it pins nothing the caller drops.
            # (Through `wake`, not `call`: the callback must not pin the call's outcome.)
            task.add_done_callback(lambda _: wake())
            try:
                if call.cancel_requested:
                    raise asyncio.CancelledError
                call.value = await fn(*args)
            except asyncio.CancelledError as exc:
                if not call.cancel_requested and task.cancelling() == 0:
                    # Nobody cancelled this call: the agent awaited something that someone
                    # else cancelled. A failure of this call, not a cancellation of it.
                    call.error = _stray(exc, fn)
                    return
                if call.error is None:  # else the loop died under it: keep why
                    call.error = exc
                raise
            except BaseException as exc:
                # Carried over and re-raised on the Trio side, SystemExit and
                # KeyboardInterrupt included: left to escape here, they would kill the loop
                # thread and leave the caller waiting for good.
                if call.error is None:
                    call.error = exc
            finally:
                with self._lock:
                    self._calls.discard(call)

        loop = self._submit(call, on_loop())
        try:
            await done.wait()
        except BaseException:
            # Cancelled (or interrupted) on the Trio side: cancel the asyncio task and wait,
            # shielded, until it has really stopped before letting the cancellation go on.
            # A closed loop means the call is already over: then just await its end.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(call.cancel)
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
        if call.error is not None:
            if isinstance(call.error, asyncio.CancelledError):
                raise RuntimeClosedError("the asyncio bridge was closed while a call was running")
            raise call.error
        return call.value  # type: ignore[no-any-return]

    def close(self) -> None:
        """Cancel what still runs on the loop, stop it and join its thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread is threading.current_thread():
            # Reached on the loop's own thread, e.g. by the runtime's finaliser when its last
            # reference went away here: the loop cannot wait for itself, so a helper does.
            threading.Thread(target=self._stop, args=(loop, thread), daemon=True).start()
            return
        self._stop(loop, thread)

    def _stop(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        """Cancel what runs on ``loop``, stop it and join ``thread``; never called on it."""

        async def shutdown() -> None:
            # Every submitted call's task exists by now (submission happened-before the close
            # under the lock, and the loop runs callbacks in order), but may not have started:
            # flag them all rather than cancelling tasks that would then skip their clean-up.
            with self._lock:
                calls = list(self._calls)
            for call in calls:
                call.cancel()
            others = asyncio.all_tasks() - {asyncio.current_task()}
            if others:
                await asyncio.gather(*others, return_exceptions=True)
            await loop.shutdown_asyncgens()
            await loop.shutdown_default_executor()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    async def aclose(self) -> None:
        """``close()`` without blocking the caller's event loop."""
        await anyio.to_thread.run_sync(self.close, abandon_on_cancel=False)


class HomePortal:
    """The way back from the bridge loop to the Trio task that dispatched the agent.

    A pydantic-ai tool runs on the bridge loop; when it spawns a child (``ctx.run``), the
    child must run at home, under Trio, inside the dispatching task's task group, so it
    shares the runtime's budget and is cancelled with its parent. Cancelling the waiting
    asyncio side cancels the home task, and waits for it to finish.
    """

    def __init__(self, task_group: anyio.abc.TaskGroup) -> None:
        import trio

        self._token = trio.lowlevel.current_trio_token()
        self._task_group = task_group
        self._thread = threading.get_ident()

    def is_away(self) -> bool:
        """True when called from another thread than home (i.e. from the bridge loop)."""
        return threading.get_ident() != self._thread

    async def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``await fn()`` at home; called from the bridge loop."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        outcome: list[Any] = []
        scope_box: list[anyio.CancelScope] = []
        cancel_requested = False

        async def at_home() -> None:
            try:
                with anyio.CancelScope() as scope:
                    scope_box.append(scope)
                    if cancel_requested:
                        scope.cancel()
                    try:
                        outcome.append((True, await fn()))
                    except Exception as exc:
                        outcome.append((False, exc))
            finally:
                # Also when an outer scope cancelled us: the bridge side must never hang.
                loop.call_soon_threadsafe(_resolve, finished)

        def cancel_at_home() -> None:
            nonlocal cancel_requested
            cancel_requested = True
            for scope in scope_box:
                scope.cancel()

        self._token.run_sync_soon(self._task_group.start_soon, at_home)
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            self._token.run_sync_soon(cancel_at_home)
            while not finished.done():
                try:
                    await asyncio.shield(finished)
                except asyncio.CancelledError:
                    continue
            raise
        if not outcome:
            raise asyncio.CancelledError
        ok, value = outcome[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value


def _stray(exc: asyncio.CancelledError, fn: Any) -> BaseException:
    """A stray cancellation of a bridged call, named after the function called (agents are
    named by the executor, which converts their strays before they reach here)."""
    error = stray_cancellation(exc, str(getattr(fn, "__qualname__", fn)))
    return exc if error is None else error


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
