"""Whether a peer is there, judged by its TCP connection, not by its silence.

A peer that is merely busy, or stopped (SIGSTOP, a debugger, a suspended step) and continued
later, keeps its connection: the kernel answers for it. A peer whose process died has its
connection closed by the kernel at once, and one whose node died or whose network broke is
found out by TCP keepalive within about KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT
seconds. None of this needs the peer's Python loop, nor ours: so a silent peer whose
connection is up is waited for, and only a silent peer whose connection is down is lost.

ZeroMQ's monitor reports connections by file descriptor, and this libzmq has no ROUTER_NOTIFY
to name the peer that went: the connecting side reports its own local address (`ip:port`, one
`getsockname`), and the bound side maps each accepted connection's descriptor to its peer
address (`getpeername`), so a closed descriptor names the peer it carried.
"""
import asyncio
import logging
import os
import socket
import time

import zmq
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger("qcg_hier")
KEEPALIVE_IDLE = 5  # seconds of silence on a connection before the kernel probes it
KEEPALIVE_INTERVAL = 2
KEEPALIVE_COUNT = 3


def keep_alive(sock: zmq.Socket) -> None:
    """TCP keepalive on the socket's connections (set before bind or connect)."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_COUNT)


def fd_address(fd: int, peer: bool) -> str | None:
    """`ip:port` of a connection's far end (peer) or near end, from its descriptor."""
    try:
        conn = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None  # closed meanwhile
    try:
        ip, port = (conn.getpeername() if peer else conn.getsockname())[:2]
        return f"{ip}:{port}"
    except OSError:
        return None
    finally:
        conn.close()


class _Monitor:
    """Reads a socket's monitor events in the loop."""

    def __init__(self, sock: zmq.Socket, events: int):
        self._monitor = sock.get_monitor_socket(events)
        self._sock = sock
        self._task = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            while True:
                event = parse_monitor_message(await self._monitor.recv_multipart())
                self.on_event(event["event"], event["value"])
        except asyncio.CancelledError:
            raise
        except zmq.ZMQError:
            return  # the socket went

    def on_event(self, event: int, fd: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(0)


class AcceptedConnections(_Monitor):
    """The connections of a bound socket, by the peer address each came from."""

    def __init__(self, sock: zmq.Socket):
        super().__init__(sock, zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._by_fd: dict[int, str] = {}
        self._up: set[str] = set()
        self._closed: set[str] = set()

    def on_event(self, event: int, fd: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            address = fd_address(fd, peer=True)
            if address is not None:
                self._by_fd[fd] = address
                self._up.add(address)
        elif event == zmq.EVENT_DISCONNECTED:
            address = self._by_fd.pop(fd, None)
            if address is not None:
                self._up.discard(address)
                self._closed.add(address)
                if len(self._closed) > 10_000:
                    self._closed.clear()  # old peers' addresses: only a recent one is asked about

    def is_up(self, address: str | None) -> bool | None:
        """True: that connection is up; False: it closed; None: not known (no address, or not seen
        yet: the peer's report of its address can arrive before the accept is read)."""
        if address is None:
            return None
        if address in self._up:
            return True
        return False if address in self._closed else None


class OutgoingConnection(_Monitor):
    """The one connection of a connecting socket: up or not, and its local address, reported to
    `on_connected(address)` at each (re)connection so the peer can name it."""

    def __init__(self, sock: zmq.Socket, on_connected):
        super().__init__(sock, zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self.on_connected = on_connected
        self.up = False
        self.down_since = time.monotonic()

    def on_event(self, event: int, fd: int) -> None:
        if event == zmq.EVENT_CONNECTED:
            self.up = True
            address = fd_address(fd, peer=False)
            if address is not None:
                self.on_connected(address)
        elif event == zmq.EVENT_DISCONNECTED:
            self.up = False
            self.down_since = time.monotonic()
