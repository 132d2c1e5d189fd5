"""WebSocket chat across worker processes and hosts, relayed through Redis pub/sub.

Every worker (``--workers N`` processes sharing the port, or servers on several hosts
pointed at the same Redis) holds one subscription to the chat's Redis channel. What a
client says is published to the channel; each worker sends what the channel carries to
its own clients. So a line said to any worker reaches the clients of every worker.

    redis-server --port 6379 &
    python examples/chat_cluster.py --port 9002 --workers 2 --redis redis://127.0.0.1:6379/0
    python examples/websocket_chat.py --client --port 9002 --name ann   # type lines

Clients pick a name with the query string (``ws://host:port/?name=ann``; names are not
checked for uniqueness across the cluster). ``/whoami`` answers with the client's name
and the worker (pid and host) serving it. Anything published to the channel reaches
every client, so ``redis-cli publish pygev:chat "* maintenance at 18:00"`` announces.

How delivery works: every line goes through Redis, also to the sender's own worker and
back to the sender, who takes its own line as proof that it went out. Redis hands a
channel's messages to every subscriber in the order it took them, so all clients see
the same order. A line is at most ``--max-message`` bytes (past it the client is closed
with 1009); binary messages are refused (1003). A client that stops reading is dropped
once 4 MiB wait for it.

When Redis goes away: pub/sub delivers at most once, and nothing is kept for a worker
that is not subscribed. A worker notices a lost subscription at once when the connection
closes, and within twice ``--health-check`` seconds when Redis stalls or the network goes
silent (it pings Redis after that much silence). It tells its clients, subscribes again
with backoff (0.2 s doubling to 5 s, with jitter), and tells them once it is back; lines
published meanwhile are lost for its clients. A line Redis does not take within 3 s is
answered with ``* not delivered: ...`` to its sender, whose connection stays open (after
a timeout, rather than a refusal, Redis may still carry it later). The server never stops
for Redis; only at start a worker that cannot subscribe fails (with ``--workers``,
pygev.run starts it again with backoff). SIGTERM or Ctrl+C drains the clients (close
1001), then ends the subscription.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import socket
import sys
from collections.abc import Callable
from urllib.parse import parse_qs

import redis.asyncio as redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff, NoBackoff

import pygev

log = logging.getLogger("chat_cluster")

#: Seconds a publish may take, retries included, before its sender is told it failed.
PUBLISH_TIMEOUT = 3.0
#: Seconds Redis has to confirm a subscription.
CONFIRM_TIMEOUT = 5.0
#: Backoff between attempts to subscribe again.
FIRST_RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 5.0
#: Unsent output past which a client that does not read is dropped (reset), so that one
#: stalled reader cannot make its worker buffer the whole chat.
MAX_UNSENT = 4 << 20

RELAY_DOWN = "* the chat relay is down: reconnecting; lines said meanwhile will not reach you"
RELAY_BACK = "* the chat relay is back"
NOT_DELIVERED = "* not delivered: the chat relay is unavailable, try again later"


def worker() -> str:
    """This process, as the logs and ``/whoami`` name it."""
    return f"worker {os.getpid()} at {socket.gethostname()}"


class Relay:
    """This worker's link to the chat's Redis channel.

    :meth:`publish` sends a line to the clients of every worker, this one's included. While
    the relay runs (``async with relay``), ``deliver`` gets every line published by anyone,
    and a notice for this worker's clients when the subscription is lost and when it is
    back. It all runs in the event loop of the server's callbacks, so ``deliver`` may touch
    the handler's state without locks.
    """

    def __init__(
        self, url: str, channel: str, deliver: Callable[[str], None], health_check: float
    ) -> None:
        self.url = url
        self.channel = channel
        self.deliver = deliver
        #: Seconds of silence on the subscription after which Redis is pinged, and the
        #: seconds it has to answer: a link that died without a FIN (a stalled Redis, a
        #: lost network) is found within twice this.
        self.health_check = health_check
        #: Whether the subscription is active: lines published now reach this worker.
        self.subscribed = False
        self._publisher: redis.Redis | None = None
        self._subscriber: redis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._publish_failing = False

    async def __aenter__(self) -> Relay:
        # Publishing retries a little (a connection dropped by a Redis restart is made
        # again); past PUBLISH_TIMEOUT the sender hears that its line was not delivered.
        self._publisher = redis.Redis.from_pool(
            redis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=50,  # publishes at once; more wait for a connection
                timeout=PUBLISH_TIMEOUT,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
            )
        )
        # The subscription does not retry by itself: a lost one must be seen here, to
        # tell the clients and to subscribe again.
        self._subscriber = redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), retries=0))
        try:
            pubsub = await self._subscribe()  # fail at start, not at the first line
        except BaseException:
            await self._close_clients()
            raise
        self._listener = asyncio.create_task(self._listen_forever(pubsub))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.wait([self._listener])  # its own end, not the cancellation's
        await self._close_clients()

    async def publish(self, line: str) -> bool:
        """Publishes ``line`` to every worker; False when Redis did not take it."""
        assert self._publisher is not None, "publish() before the relay started"
        try:
            await asyncio.wait_for(self._publisher.publish(self.channel, line), PUBLISH_TIMEOUT)
        except (redis.RedisError, OSError, asyncio.TimeoutError) as exc:
            if not self._publish_failing:  # one line per outage, not one per message
                reason = str(exc) or type(exc).__name__  # a timeout says nothing itself
                log.warning("%s cannot publish to %s: %s", worker(), self.channel, reason)
            self._publish_failing = True
            return False
        if self._publish_failing:
            log.info("%s publishes to %s again", worker(), self.channel)
            self._publish_failing = False
        return True

    async def _subscribe(self) -> PubSub:
        assert self._subscriber is not None
        pubsub = self._subscriber.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            # Once Redis confirms, nothing published to the channel is missed.
            reply = await pubsub.get_message(timeout=CONFIRM_TIMEOUT)
            if reply is None or reply["type"] != "subscribe":
                raise redis.ConnectionError(f"no confirmation of SUBSCRIBE, got {reply!r}")
        except BaseException:
            await pubsub.aclose()
            raise
        log.info("%s subscribed to %s", worker(), self.channel)
        self.subscribed = True
        return pubsub

    async def _listen_forever(self, pubsub: PubSub) -> None:
        while True:
            try:
                await self._listen(pubsub)
            except (redis.RedisError, OSError) as exc:
                log.warning("%s lost its subscription to %s: %s", worker(), self.channel, exc)
            except Exception:  # a bug must not end this worker's deliveries for good
                log.exception("%s: the relay failed; subscribing again", worker())
            finally:
                self.subscribed = False
                await pubsub.aclose()
            self.deliver(RELAY_DOWN)
            pubsub = await self._subscribe_again()
            self.deliver(RELAY_BACK)

    async def _listen(self, pubsub: PubSub) -> None:
        """Hands every published line to ``deliver``; returns only by raising."""
        while True:
            silence = self.health_check
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=silence)
            if message is None:  # silence: is Redis still there?
                await pubsub.ping()
                message = await pubsub.get_message(timeout=silence)
                if message is None:
                    raise redis.ConnectionError(f"no answer to a ping in {silence} s")
            if message["type"] == "message":
                self.deliver(message["data"].decode("utf-8", "replace"))

    async def _subscribe_again(self) -> PubSub:
        delay = FIRST_RETRY_DELAY
        while True:
            # Jitter: the workers of every host do not all knock at once.
            await asyncio.sleep(random.uniform(delay / 2, delay))
            try:
                return await self._subscribe()
            except (redis.RedisError, OSError) as exc:
                log.info("%s cannot subscribe yet: %s", worker(), exc)
            delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _close_clients(self) -> None:
        for client in (self._publisher, self._subscriber):
            if client is not None:
                await client.aclose()


class Chat(pygev.WebSocketHandler):
    """This worker's clients: what they say goes to Redis, what Redis carries comes to
    them."""

    def __init__(self, redis_url: str, channel: str, health_check: float) -> None:
        self.clients: dict[int, pygev.Connection] = {}
        self.relay = Relay(redis_url, channel, self.broadcast, health_check)

    def on_handshake(self, conn: pygev.Connection, request: pygev.WebSocketRequest) -> None:
        name = parse_qs(request.query or "").get("name", [""])[0].strip()[:32]
        conn.context = name or f"guest-{os.getpid()}-{conn.id}"

    def on_connect(self, conn: pygev.Connection) -> None:
        self.clients[conn.id] = conn
        if not self.relay.subscribed:
            conn.send(RELAY_DOWN)

    async def on_message(self, conn: pygev.Connection, data: str | bytes) -> str | None:
        if isinstance(data, bytes):
            conn.close(1003, "text only")
            return None
        if data.startswith("/"):
            return self.command(conn, data)
        # Through Redis to every worker, this one included: the sender gets its own line
        # back as every other client does, in the same order.
        if not await self.relay.publish(f"{conn.context}: {data}"):
            return NOT_DELIVERED
        return None

    def on_close(self, conn: pygev.Connection) -> None:
        self.clients.pop(conn.id, None)

    def command(self, conn: pygev.Connection, line: str) -> str:
        if line.strip() == "/whoami":
            return f"* you are {conn.context}, on {worker()} ({len(self.clients)} here)"
        return "* unknown command: /whoami is the only one"

    def broadcast(self, line: str) -> None:
        for client in self.clients.values():
            try:
                client.send(line)
            except pygev.ConnectionClosed:
                pass  # closing (or dropped for not reading): on_close removes it soon


class ChatServer(pygev.Server):
    """A server whose chat relay runs while it serves: subscribed before the first client
    is served, unsubscribed after the last one was drained and closed.

    ``pygev.run`` calls ``start()``, which serves a handler with an ``async def`` callback
    with ``asyncio.run(self.serve())``: overriding ``serve()`` puts the relay in that loop.
    """

    chat: Chat

    async def serve(self) -> None:
        async with self.chat.relay:
            await super().serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other hosts")
    parser.add_argument("--port", type=int, default=9002, help="0 picks a free port")
    parser.add_argument("--loops", type=int, default=1, help="loop threads per worker")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--channel", default="pygev:chat", help="the Redis channel")
    parser.add_argument("--max-message", type=int, default=4096, help="the longest line, in bytes")
    parser.add_argument(
        "--health-check",
        type=float,
        default=15.0,
        help="seconds of silence after which Redis is pinged, and it has as long to answer",
    )
    args = parser.parse_args()
    if args.workers > 1 and args.port == 0:
        parser.error("--workers needs a fixed --port")
    if args.health_check <= 0:
        parser.error("--health-check must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    protocol = pygev.WebSocket(max_message_size=args.max_message)
    address = f"{args.host}:{args.port}"

    def make_server() -> pygev.Server:
        chat = Chat(args.redis, args.channel, args.health_check)
        server = ChatServer(
            chat, address, num_loops=args.loops, protocol=protocol, max_write_buffer=MAX_UNSENT
        )
        server.chat = chat
        return server

    if args.workers > 1:
        print(f"pygev chat cluster listening on {address}", flush=True)
        # SIGTERM and SIGINT stop every worker gracefully (pygev.run handles both).
        pygev.run(make_server, workers=args.workers)
        return
    server = make_server()
    host, port = server.address
    print(f"pygev chat cluster listening on {host}:{port}", flush=True)
    try:
        server.start()  # SIGTERM and Ctrl+C stop it gracefully
    except redis.RedisError as exc:  # Redis unreachable at start
        sys.exit(f"chat_cluster: cannot subscribe to {args.channel}: {exc}")


if __name__ == "__main__":
    main()
