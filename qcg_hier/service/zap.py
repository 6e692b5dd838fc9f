"""ZeroMQ's authentication hook (ZAP): one handler for the whole service, a list of
admitted CURVE client keys per domain (clients of the request socket, node agents)."""
import logging

import zmq
import zmq.asyncio

from ..auth import ZAP_ENDPOINT, public_key_bytes

log = logging.getLogger("qcg_hier")


class ZapHandler:
    def __init__(self, ctx: zmq.asyncio.Context):
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
            log.warning("refused a connection from %s to %s: mechanism %s without an admitted key",
                        address.decode(errors="replace"), domain.decode(errors="replace"),
                        mechanism.decode(errors="replace"))
            await self.sock.send_multipart([version, request_id, b"400", b"not authorized", b"", b""])

    def close(self) -> None:
        self.sock.close(0)
