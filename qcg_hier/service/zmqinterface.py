"""The network interface: upstream's request/response protocol over ZeroMQ, plus PUB events.

A ROUTER socket (not upstream's REP) serves any number of clients at once: REQ clients
(upstream's) and DEALER clients (ours) both work. Replies to a client that never reads are
dropped by ZeroMQ, so no client can block the service. With credentials, the socket is a
CURVE server and a ZAP handler admits only peers holding the instance's client key.
"""
import asyncio
import logging
import socket

import orjson
import zmq
import zmq.asyncio
from zmq.utils.monitor import parse_monitor_message

from .. import protocol
from ..readagain import ReadAgain
from ..socket_exit import close_delivering
from ..auth import Credentials
from .zap import ZapHandler

log = logging.getLogger("qcg_hier")
CLIENT_DOMAIN = "qcg-hier-clients"
MAX_REQUEST_BYTES = 64 << 20  # larger requests get an error reply
MAX_MESSAGE_BYTES = 512 << 20  # larger messages make ZeroMQ drop the connection
REQUESTS_PER_TURN = 64  # requests served per turn of the event loop (an endless drain starves the rest)


def advertised_host(bind_host: str) -> str:
    if bind_host in ("*", "0.0.0.0"):
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return "127.0.0.1"
    return bind_host


def bind(sock: zmq.Socket, host: str, port: int | None, port_min: int, port_max: int) -> int:
    if port:
        sock.bind(f"tcp://{host}:{port}")
        return port
    return sock.bind_to_random_port(f"tcp://{host}", min_port=port_min, max_port=port_max + 1, max_tries=1000)


class Publisher:
    """Status events as upstream: one frame `"<TOPIC> <json>"`. XPUB tells us who listens."""

    TOPICS = ("IST", "IFI", "JST", "JFI", "NOJ")

    def __init__(self, sock, manager_id: str):
        self.sock = sock
        self.manager_id = manager_id
        # per topic, how many live subscriptions match it: a (un)subscription costs the few topics,
        # not a pass over every prefix ever subscribed (30,000 of them froze the loop for minutes)
        self.matching = {topic: 0 for topic in self.TOPICS}
        self.wanted: frozenset = frozenset()  # topics somebody subscribes to: others are not even formatted

    def wants(self, topic: str) -> bool:
        return topic in self.wanted

    def on_subscription(self, message: bytes) -> None:
        """XPUB passes each distinct prefix's first subscription and last unsubscription only."""
        if not message:
            return
        prefix = bytes(message[1:]).decode(errors="replace")
        change = 1 if message[0] == 1 else -1
        touched = [t for t in self.TOPICS if t.startswith(prefix)]
        for topic in touched:
            self.matching[topic] = max(0, self.matching[topic] + change)
        if touched:
            self.wanted = frozenset(t for t, n in self.matching.items() if n > 0)

    def publish(self, topic: str, body: dict) -> None:
        body["manager"] = self.manager_id
        try:
            self.sock.send(topic.encode() + b" " + orjson.dumps(body), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # a slow subscriber: PUB semantics, the event is dropped for it


class ZmqInterface:
    name = "ZMQ"

    def __init__(self, host: str, port, port_min: int, port_max: int, pub_port, credentials: Credentials | None,
                 enable_pub: bool = True):
        self.host, self.port, self.port_min, self.port_max = host, port, port_min, port_max
        self.pub_port = pub_port
        self.credentials = credentials
        self.enable_pub = enable_pub
        self.finished = False  # the network never runs out of requests by itself
        self.ctx = zmq.asyncio.Context.instance()
        self.sock = None
        self.pub_sock = None
        self.zap = None
        self.publisher = None
        self.address = None
        self.pub_address = None
        self._tasks = []
        self._read_again = None

    def open(self, manager_id: str, zap: ZapHandler | None = None) -> None:
        """Bind the sockets (before the service advertises its address)."""
        if self.credentials is not None:
            self.zap = zap
            zap.allow(CLIENT_DOMAIN, self.credentials.client_public)
        self.sock = self._socket(zmq.ROUTER, plain=True)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        port = bind(self.sock, self.host, self.port, self.port_min, self.port_max)
        self.address = f"tcp://{advertised_host(self.host)}:{port}"
        if self.enable_pub:
            self.pub_sock = self._socket(zmq.XPUB)
            self.pub_sock.setsockopt(zmq.SNDHWM, 100_000)
            pub_port = bind(self.pub_sock, self.host, self.pub_port, self.port_min, self.port_max)
            self.pub_address = f"tcp://{advertised_host(self.host)}:{pub_port}"
            self.publisher = Publisher(self.pub_sock, manager_id)

    def _socket(self, kind, plain: bool = False):
        """`plain`: a blocking-API socket (read by a loop reader), else an asyncio one."""
        sock = zmq.Socket(self.ctx, kind) if plain else self.ctx.socket(kind)
        sock.linger = 0
        if self.credentials is not None:
            self.credentials.secure_server(sock, CLIENT_DOMAIN)
        return sock

    async def run(self, service) -> None:
        if self.zap is not None:
            self._tasks.append(asyncio.ensure_future(self._log_refusals()))
        if self.publisher is not None:
            self._tasks.append(asyncio.ensure_future(self._subscriptions(service)))
        # Requests are read by a loop reader on the socket's descriptor, not by awaiting a future
        # per message: a request costs no extra turns of the loop.
        loop = asyncio.get_running_loop()
        fd = self.sock.getsockopt(zmq.FD)
        reader = lambda: self._on_readable(service)  # noqa: E731
        self._read_again = ReadAgain(reader)
        loop.add_reader(fd, reader)
        self._read_again()  # a request may have come before the reader was added
        try:
            await asyncio.Future()  # until cancelled
        finally:
            loop.remove_reader(fd)

    def _on_readable(self, service) -> None:
        sock = self.sock
        if sock is None or sock.closed:
            return
        for _ in range(REQUESTS_PER_TURN):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._serve(service, frames)
        self._read_again()  # more waiting: on in the next turn, after timers and task ends

    def _serve(self, service, frames) -> None:
        identity, body = frames[0].bytes, frames[-1]
        head = [identity, b""] if len(frames) > 2 else [identity]  # a REQ client's delimiter
        response = self._answer(service, body)
        if isinstance(response, asyncio.Future):  # answered later (a governor still gathering children)
            response.add_done_callback(lambda done: self._reply(head + [protocol.encode(done.result())]))
            return
        frames = head + [protocol.encode(response)]
        if service.reply_delay:
            asyncio.get_running_loop().call_later(service.reply_delay, self._reply, frames)
            service.reply_delay = 0.0
        else:
            self._reply(frames)
        service.after_reply()  # work the reply did not wait for

    def _reply(self, frames) -> None:
        if self.sock.closed:
            return  # a late answer after shutdown
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.warning("reply dropped: %s", exc)
            return
        self._read_again()  # a request that came while we were busy raised no new edge

    def _answer(self, service, body) -> dict:
        if len(body) > MAX_REQUEST_BYTES:
            return protocol.error(f"Invalid request: request of {len(body)} bytes exceeds the limit of "
                                  f"{MAX_REQUEST_BYTES} bytes")
        try:
            request = orjson.loads(body.buffer)
        except orjson.JSONDecodeError as exc:
            return protocol.error(f"Invalid request: not valid JSON ({exc})")
        try:
            return service.handle(request)
        except Exception as exc:  # a bug must not take the interface down
            log.exception("request failed")
            return protocol.error(f"Failed to process request: {type(exc).__name__}: {exc}")

    async def _log_refusals(self) -> None:
        """A peer without CURVE, or with another server key, fails the handshake before ZAP is asked
        (ZAP logs the peers it refuses, by address): those go to the service's one refusal log. The
        event names our endpoint, not the peer's, so they are counted per listening endpoint."""
        events = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        monitor = self.sock.get_monitor_socket(events)
        try:
            while True:
                event = parse_monitor_message(await monitor.recv_multipart())
                endpoint = event["endpoint"].decode(errors="replace")
                self.zap.refusals.refused(f"a peer of {endpoint}",
                                          f"handshake failed ({zmq.Event(event['event']).name}): it does not hold "
                                          f"this instance's CURVE keys (ZeroMQ does not name the peer here)")
        finally:
            self.sock.disable_monitor()
            monitor.close(0)

    async def _subscriptions(self, service) -> None:
        while True:
            message = await self.pub_sock.recv()
            self.publisher.on_subscription(message)
            service.subscriptions_changed()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # let the cancelled tasks unwind (the monitor's cleanup needs the socket still open)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.sock is not None:
            close_delivering(self.sock)  # the last replies (to finish, say) still go out
        if self.pub_sock is not None:
            self.pub_sock.close(0)
