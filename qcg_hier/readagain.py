"""Reading a zmq socket from the event loop.

A zmq socket's descriptor is edge-triggered: after a send it raises no new edge for input that
came meanwhile, and a reader that stops at its per-turn limit must come back for the rest. Every
loop reader of a zmq socket (the agents' and the children's links, a child's link to its
governor, the request interface) asks for that extra read here."""
import asyncio


class ReadAgain:
    """One more call of `read` in the next turn of the loop, however often asked for before it."""

    __slots__ = ("read", "pending")

    def __init__(self, read):
        self.read = read
        self.pending = False

    def __call__(self) -> None:
        if not self.pending:
            self.pending = True
            asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self.pending = False
        self.read()
