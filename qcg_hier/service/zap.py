"""ZeroMQ's authentication hook (ZAP): one handler for the whole service, a list of
admitted CURVE client keys per domain (clients of the request socket, node agents), and the
one log of refused connections."""
import logging
import time

import zmq
import zmq.asyncio

from ..auth import ZAP_ENDPOINT, public_key_bytes

log = logging.getLogger("qcg_hier")


REFUSAL_LOG_INTERVAL = 60.0  # seconds: at most one line per peer host in that time


class RefusalLog:
    """Refused connections, at most one line a minute per peer host, with the number of refusals
    since its last line: a refused client retries about every 100 ms, and each retry comes from a
    new port (one line each was thousands of lines a minute)."""

    MAX_PEERS = 10_000  # hosts remembered; beyond, those whose minute is over are forgotten

    def __init__(self, interval: float = REFUSAL_LOG_INTERVAL, clock=time.monotonic):
        self.interval, self.clock = interval, clock
        self._peers: dict[str, list] = {}  # host -> [time the next line may be written, refusals not logged]

    def refused(self, host: str, what: str) -> bool:
        """Note a refusal from `host`; log a line if its minute is over. Returns whether one was."""
        now = self.clock()
        entry = self._peers.get(host)
        if entry is not None and now < entry[0]:
            entry[1] += 1
            return False
        if entry is None and len(self._peers) >= self.MAX_PEERS:
            self._peers = {h: e for h, e in self._peers.items() if now < e[0]}
        more = entry[1] if entry is not None else 0
        self._peers[host] = [now + self.interval, 0]
        log.warning("refused a connection from %s: %s%s (at most one line a minute per peer)", host, what,
                    f"; {more} more refusals since the last line" if more else "")
        return True


def peer_host(peer: str) -> str:
    """'tcp://10.1.2.3:54321' -> '10.1.2.3'; '[::1]:5' -> '::1'; a bare host stays as it is."""
    text = peer.split("://", 1)[-1]
    if text.startswith("["):
        return text[1:text.index("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class ZapHandler:
    def __init__(self, ctx: zmq.asyncio.Context):
        self.refusals = RefusalLog()
        self.allowed: dict[bytes, set] = {}
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)

    def allow(self, domain: str, public_z85: str) -> None:
        self.allowed.setdefault(domain.encode(), set()).add(public_key_bytes(public_z85))

    async def run(self) -> None:
        while True:
            frames = await self.sock.recv_multipart()
            version, request_id, domain, address, _identity, mechanism, *creds = frames
            ok = mechanism == b"CURVE" and len(creds) == 1 and creds[0] in self.allowed.get(domain, ())
            if ok:
                await self.sock.send_multipart([version, request_id, b"200", b"OK", b"peer", b""])
                continue
            self.refusals.refused(peer_host(address.decode(errors="replace")),
                                  f"{mechanism.decode(errors='replace')} without a key admitted to "
                                  f"{domain.decode(errors='replace')}")
            await self.sock.send_multipart([version, request_id, b"400", b"not authorized", b"", b""])

    def close(self) -> None:
        self.sock.close(0)
