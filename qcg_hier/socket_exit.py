"""The last frames a process sends (a reply to `finish`, `exit` to children and agents, a child's
bye) reach their peers before it ends.

ZeroMQ sends from its own I/O thread: a frame handed to `send` may still be queued when the
socket is closed, and closing with linger 0 drops it, as does `os._exit` (the service skips
interpreter teardown). So those sockets are closed with a linger, and the process waits a
bounded moment for the context to deliver what they hold before it exits.
"""
import sys
import threading

LINGER_MS = 1000  # how long a closed socket keeps trying to deliver its queued frames
DELIVERY_TIMEOUT = 2.0  # seconds the process waits for that at exit, whatever is left open


def close_delivering(sock) -> None:
    """Close `sock`, keeping its queued frames for delivery (see `deliver_pending`)."""
    sock.close(linger=LINGER_MS)


def deliver_pending(timeout: float = DELIVERY_TIMEOUT) -> None:
    """Before `os._exit`: end the asyncio ZeroMQ context, which waits for the frames sockets closed
    by `close_delivering` still hold; sockets left open are closed without a linger. Bounded: a
    context that does not end in `timeout` seconds is left to the exit."""
    if "zmq.asyncio" not in sys.modules:
        return  # no ZeroMQ socket was ever opened
    import zmq.asyncio

    context = zmq.asyncio.Context.instance()
    ender = threading.Thread(target=context.destroy, kwargs={"linger": 0}, name="zmq-delivery", daemon=True)
    ender.start()
    ender.join(timeout)
