"""The bridge between Trio and nats-py: nats-py on its own asyncio loop in a daemon thread,
reached through a batching pump.

No NATS client runs on Trio, and nats-py runs only on asyncio. Running asyncio inside Trio
(trio-asyncio) costs a full Trio scheduling round per asyncio callback, so nats-py gets a loop
of its own in a thread, created inside that thread. A crossing between the threads costs tens of
microseconds, so the bridge never crosses once per message: work for the loop is queued in a
deque, and the loop is woken only when no wake-up is already pending, once the Trio tasks
runnable in this tick have run, so that all they hand over crosses together. Results come back
the same way: what the loop's tasks hand over in one loop iteration crosses to Trio in one
wake-up. A burst of submits, publishes, acks, completions or arriving messages thus pays one
wake-up each way. The bridge moves bytes and nats-py objects only; what they mean is the
transport's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, Self, TypeVar, cast

import nats.errors
import outcome
import trio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from .._core.bounded_repr import bounded_repr
from ..errors import ClusterError
from .config import ClusterConfig

__all__ = ["Bridge", "ConnectionEvent", "Subscription"]

_T = TypeVar("_T")
_A = TypeVar("_A")

logger = logging.getLogger("terraphim_actors.cluster")

#: Between two attempts to reach a server that went away: short, as a node that cannot reach
#: NATS cannot deliver, and the servers are on the local network.
RECONNECT_WAIT = 0.25
#: How long a pull subscription's fetch waits on the server for messages before it asks again.
FETCH_TIMEOUT = 1.0
#: The most a close waits for the connection and the thread to end (it never hangs on them).
CLOSE_TIMEOUT = 5.0
#: After a fetch fails for another reason than finding nothing (the server is away), the
#: pause before the next one, so a lost server is not asked in a busy loop.
FETCH_RETRY_WAIT = 0.1

#: An item of a crossing queue: a function and its one argument, called on the far side.
_Item = tuple[Callable[[Any], object], Any]


class ConnectionEvent(enum.Enum):
    """What happened to the bridge's connection, as told to its listeners."""

    DISCONNECTED = "disconnected"
    RECONNECTED = "reconnected"
    CLOSED = "closed"


class _Pump:
    """One direction of the crossing: items queued by one thread, run on the other in bursts.

    ``wake`` is asked to schedule ``drain`` on the far side only when no drain is scheduled
    yet. The drain clears the flag before it runs anything, so an item appended while it runs
    is either run by it or has asked for another drain: none is stranded.
    """

    __slots__ = ("_items", "_scheduled", "_wake")

    def __init__(self, wake: Callable[[Callable[[], None]], None]) -> None:
        self._items: deque[_Item] = deque()
        self._scheduled = False
        self._wake = wake

    def post(self, function: Callable[[_A], object], argument: _A) -> None:
        self._items.append((function, argument))
        if not self._scheduled:
            self._scheduled = True
            self._wake(self.drain)

    def post_many(self, items: list[_Item]) -> None:
        self._items.extend(items)
        if not self._scheduled:
            self._scheduled = True
            self._wake(self.drain)

    def drain(self) -> None:
        self._scheduled = False
        items = self._items
        while items:
            function, argument = items.popleft()
            try:
                function(argument)
            except Exception:
                logger.exception("a callback crossing the NATS bridge raised")


class _Work(Generic[_T]):
    """One piece of work for the loop: its coroutine function, its asyncio task once started,
    and what to do with its outcome on the Trio side."""

    __slots__ = ("abandoned", "finish", "task", "work")

    def __init__(
        self, work: Callable[[], Awaitable[_T]], finish: Callable[[outcome.Outcome[_T]], None]
    ) -> None:
        self.work = work
        self.finish = finish
        self.task: asyncio.Future[_T] | None = None
        self.abandoned = False


class Subscription:
    """Messages from a NATS subscription (core or JetStream pull), received on the Trio side.

    Messages cross from the loop in bursts into an unbounded deque here, so none is lost
    between the two threads whatever the Trio side's pace; a core subscription's pace is
    bounded by NATS itself (the server drops for a slow consumer), a pull subscription's by
    its flow control (at most ``batch`` fetched and not yet received at any time). After
    ``unsubscribe`` or the bridge's close, what already arrived is still received, then
    ``receive`` raises ``trio.EndOfChannel`` and iteration ends.
    """

    def __init__(self, bridge: Bridge, room: int | None) -> None:
        self._bridge = bridge
        self._messages: deque[Msg] = deque()
        self._arrived: trio.Event | None = None
        self._ended = False
        self._stop: Callable[[], Awaitable[None]] | None = None
        #: Pull only: the most messages fetched and not yet received.
        self._room = room
        # The count fetched is written on the loop only, the count taken on Trio only, so
        # each side reads their difference (what is in flight or waiting) without a lock.
        self._fetched = 0
        self._taken = 0
        self._fetcher_waiting = False
        self._room_made: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        """How many messages have arrived and wait to be received."""
        return len(self._messages)

    async def receive(self) -> Msg:
        """The next message (waiting for one); ``trio.EndOfChannel`` once ended and empty."""
        await self._wait()
        message = self._messages.popleft()
        self._took(1)
        return message

    async def receive_batch(self, max_messages: int | None = None) -> list[Msg]:
        """Every message waiting, at least one and at most ``max_messages`` (waiting for the
        first); ``trio.EndOfChannel`` once ended and empty."""
        await self._wait()
        messages = self._messages
        if max_messages is None or max_messages >= len(messages):
            taken = list(messages)
            messages.clear()
        else:
            taken = [messages.popleft() for _ in range(max(1, max_messages))]
        self._took(len(taken))
        return taken

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Msg:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def unsubscribe(self) -> None:
        """Stop the subscription on the server (for a pull, stop fetching); messages already
        here can still be received. Does nothing the second time or after the bridge closed."""
        stop, self._stop = self._stop, None
        self._end()
        self._bridge._subscriptions.discard(self)
        if stop is not None and not self._bridge.closed:
            with contextlib.suppress(nats.errors.Error, ClusterError):
                await self._bridge.run(stop)

    async def _wait(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._messages:
            if self._ended:
                raise trio.EndOfChannel
            if self._arrived is None:
                self._arrived = trio.Event()
            await self._arrived.wait()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def _unreceived(self) -> int:
        """Pull only: how many fetched messages the Trio side has not taken yet."""
        return self._fetched - self._taken

    def _took(self, count: int) -> None:
        self._taken += count
        room = self._room
        if self._fetcher_waiting and room is not None and self._unreceived() <= room // 2:
            self._fetcher_waiting = False
            if self._room_made is not None:
                self._bridge._to_loop.post(_set_event, self._room_made)

    def _deliver(self, message: Msg) -> None:
        self._messages.append(message)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def _deliver_many(self, messages: list[Msg]) -> None:
        self._messages.extend(messages)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def _end(self) -> None:
        self._ended = True
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None


def _set_event(event: asyncio.Event) -> None:
    event.set()


class Bridge:
    """A nats-py connection on its own asyncio loop and thread, used from one Trio run.

    Open it with ``async with Bridge.connect(config) as bridge:``. Every method is called from
    the Trio thread. ``client`` and ``jetstream`` are nats-py's objects, to be used only inside
    coroutines that ``run`` or ``submit`` execute on the bridge's loop.

    Order: the ``*_nowait`` operations (publish, respond, ack, nak, term) go out in the order
    they were called, one after another; ``run`` and ``submit`` start in the order called but
    run concurrently, so their effects are not ordered with each other or with the
    ``*_nowait`` ones.
    """

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._token = trio.lowlevel.current_trio_token()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=self._serve, name=f"nats-bridge-{config.cluster}.{config.node}", daemon=True
        )
        self._to_loop = _Pump(self._wake_loop_after_tick)
        self._to_trio = _Pump(self._wake_trio)
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None
        self._closed = False
        self._connected = False
        self._ready = trio.Event()
        self._stopped = trio.Event()
        self._listeners: list[Callable[[ConnectionEvent], None]] = []
        self._reconnected = trio.Event()
        self._subscriptions: set[Subscription] = set()
        # Loop side only.
        self._tasks: set[asyncio.Future[Any]] = set()
        self._gathered: list[_Item] = []
        self._gathering = False
        self._sending = False
        # The *_nowait sends skip the general pump: Trio appends here, and one task on the
        # loop sends them in order. The flag says a sender is running or asked for, as a
        # pump's does.
        self._outgoing: deque[tuple[Callable[..., Awaitable[object]], tuple[Any, ...]]] = deque()
        self._send_scheduled = False
        self._stopping = False
        self._last_error: BaseException | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, config: ClusterConfig) -> AsyncIterator[Bridge]:
        """Connect to ``config.servers`` (``ClusterError`` if no server answers within
        ``config.connect_timeout``); at the end close the connection and end the thread,
        within a bounded time, whatever happened inside."""
        bridge = cls(config)
        try:
            await bridge._open()
            yield bridge
        finally:
            await bridge._close()

    @property
    def client(self) -> Client:
        """nats-py's client: use it only inside work run on the bridge's loop."""
        if self._client is None:
            raise ClusterError("the bridge is not connected")
        return self._client

    @property
    def jetstream(self) -> JetStreamContext:
        """nats-py's JetStream context: use it only inside work run on the bridge's loop."""
        if self._jetstream is None:
            raise ClusterError("the bridge is not connected")
        return self._jetstream

    @property
    def closed(self) -> bool:
        """Whether the bridge has closed (or is closing): it takes no more work."""
        return self._closed

    @property
    def connected(self) -> bool:
        """Whether the connection is up, as last told to the Trio side."""
        return self._connected and not self._closed

    def add_listener(self, listener: Callable[[ConnectionEvent], None]) -> None:
        """Call ``listener`` on the Trio thread at each disconnection, reconnection and at the
        connection's close."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ConnectionEvent], None]) -> None:
        """Stop calling ``listener`` (nothing if it was not added)."""
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def wait_connected(self) -> None:
        """Return once the connection is up (at once if it is); ``ClusterError`` if the bridge
        closes first."""
        while not self.connected:
            if self._closed:
                raise ClusterError("the bridge is closed")
            await self._reconnected.wait()
        await trio.lowlevel.checkpoint()

    async def run(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``work()`` as an asyncio task on the bridge's loop and return its result (or
        raise what it raised) here.

        A run in a scope that is already cancelled never starts the work. A cancellation
        while it runs cancels the asyncio task and raises ``trio.Cancelled`` at once, without
        waiting for the task to end; its result, if it had one by then, is dropped.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        trio_task = trio.lowlevel.current_task()

        def finish(result: outcome.Outcome[_T]) -> None:
            if not job.abandoned:
                trio.lowlevel.reschedule(trio_task, result)

        job = _Work(work, finish)
        self._to_loop.post(self._start, job)

        def abort(_: Any) -> trio.lowlevel.Abort:
            job.abandoned = True
            self._to_loop.post(_cancel, job)
            return trio.lowlevel.Abort.SUCCEEDED

        return cast(_T, await trio.lowlevel.wait_task_rescheduled(abort))

    def submit(
        self, work: Callable[[], Awaitable[_T]], done: Callable[[outcome.Outcome[_T]], None]
    ) -> None:
        """Run ``work()`` on the bridge's loop, and later call ``done`` on the Trio thread
        with its ``outcome.Value`` or ``outcome.Error``. Never raises: on a closed bridge
        ``done`` gets a ``ClusterError``. Works submitted in one Trio tick cross together, and
        outcomes ready together come back together."""
        if self._closed:
            self._to_trio.post(done, outcome.Error(ClusterError("the bridge is closed")))
            return
        self._to_loop.post(self._start, _Work(work, done))

    def publish_nowait(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish on core NATS, at most once; a failure is logged, never raised."""
        self._send(_publish, (self, subject, payload, headers))

    def respond_nowait(
        self, msg: Msg, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Publish ``payload`` to ``msg``'s reply subject (``ClusterError`` at once if it has
        none); a failure on the way is logged."""
        if not msg.reply:
            raise ClusterError(f"the message on {bounded_repr(msg.subject)} has no reply subject")
        self._send(_publish, (self, msg.reply, payload, headers))

    def ack_nowait(self, msg: Msg) -> None:
        """Acknowledge a JetStream message; a failure is logged."""
        self._send(Msg.ack, (msg,))

    def nak_nowait(self, msg: Msg, delay: float | None = None) -> None:
        """Ask JetStream to redeliver a message (after ``delay`` seconds when given)."""
        self._send(Msg.nak, (msg, delay))

    def term_nowait(self, msg: Msg) -> None:
        """Tell JetStream never to redeliver a message."""
        self._send(Msg.term, (msg,))

    def in_progress_nowait(self, msg: Msg) -> None:
        """Tell JetStream a message is still being worked on: its ack wait starts again."""
        self._send(Msg.in_progress, (msg,))

    async def subscribe(self, subject: str, *, queue: str = "") -> Subscription:
        """Subscribe to ``subject`` on core NATS (in ``queue``'s group when given)."""
        subscription = Subscription(self, None)
        deliver = subscription._deliver
        post = self._to_trio_soon

        async def on_message(message: Msg) -> None:
            post(deliver, message)

        async def start() -> NatsSubscription:
            return await self.client.subscribe(subject, queue=queue, cb=on_message)

        nats_subscription = await self.run(start)
        subscription._stop = nats_subscription.unsubscribe
        self._track(subscription)
        return subscription

    async def pull(
        self,
        stream: str,
        durable: str,
        subject_filter: str,
        *,
        batch: int = 256,
        config: ConsumerConfig | None = None,
    ) -> Subscription:
        """Consume the durable pull consumer ``durable`` of ``stream`` (created with
        ``subject_filter`` and ``config`` if it does not exist). At most ``batch`` messages are
        fetched and not yet received at any time: it fetches again once half of them have been
        received, so a slow consumer does not see its messages' ack wait run out unseen.
        Acknowledge each with ``ack_nowait`` (or ``nak_nowait``/``term_nowait``)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ClusterError(f"batch must be an int of at least 1, got {bounded_repr(batch)}")
        subscription = Subscription(self, batch)
        deliver_many = subscription._deliver_many
        post = self._to_trio_soon

        async def fetch_forever(puller: JetStreamContext.PullSubscription) -> None:
            room_made = asyncio.Event()
            subscription._room_made = room_made
            unreceived = subscription._unreceived
            low_water = batch // 2
            while True:
                # Fetch again once half the batch has been received, so a consumer never
                # holds more than a batch it has not seen (each with its ack wait running).
                while unreceived() > low_water:
                    room_made.clear()
                    subscription._fetcher_waiting = True
                    if unreceived() <= low_water:
                        break
                    await room_made.wait()
                subscription._fetcher_waiting = False
                try:
                    messages = await puller.fetch(batch - unreceived(), timeout=FETCH_TIMEOUT)
                except TimeoutError:
                    continue
                except nats.errors.ConnectionClosedError:
                    return
                except Exception as error:
                    logger.debug("a fetch from %s/%s failed: %r", stream, durable, error)
                    await asyncio.sleep(FETCH_RETRY_WAIT)
                    continue
                subscription._fetched += len(messages)
                post(deliver_many, messages)

        async def start() -> Callable[[], Awaitable[None]]:
            # nats-py fills in the config it is given: hand it a copy.
            puller = await self.jetstream.pull_subscribe(
                subject_filter,
                durable=durable,
                stream=stream,
                config=None if config is None else dataclasses.replace(config),
            )
            fetcher = asyncio.get_running_loop().create_task(fetch_forever(puller))
            self._tasks.add(fetcher)
            fetcher.add_done_callback(self._tasks.discard)

            async def stop() -> None:
                fetcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetcher
                await puller.unsubscribe()

            return stop

        subscription._stop = await self.run(start)
        self._track(subscription)
        return subscription

    # -- the Trio side ------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterError("the bridge is closed")

    def _track(self, subscription: Subscription) -> None:
        if self._closed:
            subscription._end()
        else:
            self._subscriptions.add(subscription)

    def _send(self, send: Callable[..., Awaitable[object]], arguments: tuple[Any, ...]) -> None:
        if self._closed:
            logger.debug("dropped a %s on a closed bridge", send.__name__)
            return
        self._outgoing.append((send, arguments))
        if not self._send_scheduled:
            self._send_scheduled = True
            self._wake_loop_after_tick(self._start_sending)

    def _wake_loop_after_tick(self, drain: Callable[[], None]) -> None:
        """Wake the loop once Trio's runnable tasks have run: what they all hand over in this
        tick is queued by then and crosses in this one wake-up."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._wake_loop, drain)

    def _wake_trio(self, drain: Callable[[], None]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(drain)

    def _connection_event(self, event: ConnectionEvent) -> None:
        self._connected = event is ConnectionEvent.RECONNECTED
        if self._connected:
            self._reconnected.set()
            self._reconnected = trio.Event()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("a connection listener raised")

    async def _open(self) -> None:
        self._thread.start()
        await self._ready.wait()
        if self._loop is None:
            raise ClusterError("the NATS bridge's thread could not make its event loop")
        await self.run(self._connect)
        self._connected = True

    async def _close(self) -> None:
        if self._closed and self._stopped.is_set():
            return
        self._closed = True
        for subscription in self._subscriptions:
            subscription._end()
        self._subscriptions.clear()
        with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT * 2) as waited:
            if self._thread.is_alive() or self._ready.is_set():
                await self._ready.wait()
                self._to_loop.post(self._begin_shutdown, None)
                await self._stopped.wait()
        if waited.cancelled_caught:
            logger.warning("the NATS bridge's thread did not end within its close timeout")
        self._connected = False
        self._reconnected.set()

    # -- the loop side ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
        except BaseException:
            # _open sees no loop once ready and fails with ClusterError instead of waiting.
            self._to_trio.post(_set_trio_event, self._ready)
            self._to_trio.post(_set_trio_event, self._stopped)
            raise
        self._loop = loop
        self._to_trio.post(_set_trio_event, self._ready)
        try:
            loop.run_forever()
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            self._to_trio.post(_set_trio_event, self._stopped)

    def _to_trio_soon(self, function: Callable[[_A], object], argument: _A) -> None:
        """Hand ``function(argument)`` to Trio with whatever else this loop iteration hands
        over: the batch crosses once the iteration's ready callbacks have run, so tasks that
        end together (a burst of work, of arriving messages) cross in one wake-up."""
        self._gathered.append((function, argument))
        if not self._gathering:
            self._gathering = True
            assert self._loop is not None
            self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        self._gathering = False
        gathered, self._gathered = self._gathered, []
        self._to_trio.post_many(gathered)

    def _wake_loop(self, drain: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(drain)

    def _start(self, job: _Work[Any]) -> None:
        loop = self._loop
        assert loop is not None
        if self._stopping:
            self._to_trio_soon(job.finish, outcome.Error(ClusterError("the bridge is closed")))
            return
        try:
            task = loop.create_task(_await(job.work))
        except Exception as error:
            self._to_trio_soon(job.finish, outcome.Error(error))
            return
        job.task = task
        self._tasks.add(task)
        task.add_done_callback(lambda done: self._finished(job, done))

    def _finished(self, job: _Work[Any], task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            result: outcome.Outcome[Any] = outcome.Error(
                ClusterError("the work was cancelled before it finished (the bridge closed)")
                if self._stopping
                else ClusterError("the work was cancelled")
            )
        elif (error := task.exception()) is not None:
            result = outcome.Error(error)
        else:
            result = outcome.Value(task.result())
        self._to_trio_soon(job.finish, result)

    def _start_sending(self) -> None:
        if not self._sending and not self._stopping and self._loop is not None:
            self._sending = True
            task = self._loop.create_task(self._send_all())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_all(self) -> None:
        outgoing = self._outgoing
        try:
            while True:
                while outgoing:
                    send, arguments = outgoing.popleft()
                    try:
                        await send(*arguments)
                    except Exception as error:
                        logger.warning("a NATS %s failed: %r", send.__name__, error)
                # Clear the flag, then look again: what Trio appended before the flag fell
                # is sent here, and what it appends after wakes a new sender.
                self._send_scheduled = False
                if not outgoing:
                    return
                self._send_scheduled = True
        finally:
            self._sending = False

    async def _connect(self) -> None:
        config = self.config
        client = Client()
        post = self._to_trio_soon
        report = self._connection_event

        async def on_error(error: Exception) -> None:
            self._last_error = error
            logger.debug("NATS connection error: %r", error)

        async def on_disconnected() -> None:
            post(report, ConnectionEvent.DISCONNECTED)

        async def on_reconnected() -> None:
            post(report, ConnectionEvent.RECONNECTED)

        async def on_closed() -> None:
            post(report, ConnectionEvent.CLOSED)

        # Each attempt's own bound, in whole seconds as nats-py types it; the whole connect is
        # bounded by the exact timeout below. The wait between attempts is typed int too but
        # used as seconds in a sleep, so a fraction works.
        connect_timeout = math.ceil(config.connect_timeout)
        reconnect_wait = cast(int, RECONNECT_WAIT)
        try:
            await asyncio.wait_for(
                client.connect(
                    servers=list(config.servers),
                    name=f"{config.cluster}.{config.node}",
                    error_cb=on_error,
                    disconnected_cb=on_disconnected,
                    reconnected_cb=on_reconnected,
                    closed_cb=on_closed,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=reconnect_wait,
                    connect_timeout=connect_timeout,
                    user=config.user,
                    password=config.password,
                    token=config.token,
                    user_credentials=config.creds_file,
                    tls=config.tls,
                ),
                config.connect_timeout,
            )
        except TimeoutError:
            await _close_quietly(client)
            raise ClusterError(
                f"could not connect to NATS at {', '.join(config.servers)} within"
                f" {config.connect_timeout:g} s (last error: {bounded_repr(self._last_error)})"
            ) from None
        except ImportError as error:
            await _close_quietly(client)
            raise ClusterError(
                f"a NATS credentials file needs the nkeys package ({error})"
            ) from error
        except BaseException:
            # Cancelled (the bridge closing) or failed otherwise: leave no socket open.
            await _close_quietly(client)
            raise
        self._client = client
        # JetStream's own requests (streams, consumers, buckets) that carry no deadline of
        # their own wait as long as the connection may: a replicated stream answers only once
        # its servers have a leader, which takes seconds after a server is lost.
        self._jetstream = client.jetstream(timeout=config.connect_timeout)

    def _begin_shutdown(self, _: None) -> None:
        assert self._loop is not None
        self._stopping = True
        self._loop.create_task(self._shutdown())

    async def _shutdown(self) -> None:
        current = asyncio.current_task()
        client = self._client
        try:
            if client is not None:
                # close, never drain: a drain waits ~30 s while a pull holds a message.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
            tasks = [task for task in self._tasks if task is not current]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
            # Let the tasks' done callbacks post their outcomes before the loop stops.
            await asyncio.sleep(0)
        finally:
            asyncio.get_running_loop().stop()


def _cancel(job: _Work[Any]) -> None:
    if job.task is not None:
        job.task.cancel()


def _set_trio_event(event: trio.Event) -> None:
    event.set()


async def _await(work: Callable[[], Awaitable[_T]]) -> _T:
    return await work()


async def _publish(
    bridge: Bridge, subject: str, payload: bytes, headers: dict[str, str] | None
) -> None:
    await bridge.client.publish(subject, payload, headers=headers)


async def _close_quietly(client: Client) -> None:
    with contextlib.suppress(Exception):
        await client.close()
