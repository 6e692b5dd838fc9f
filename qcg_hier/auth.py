"""Instance credentials: ZeroMQ CURVE keys, generated per service instance.

The service keeps a server key pair and one client key pair in
`<service dir>/credentials.json` (mode 0600, inside the 0700 service directory). A request
is executed only from a peer that proves it holds the client secret key. Clients find the
keys in that file, or in the environment variables below, which every task receives so it
can submit more jobs. `--auth none` switches all of this off (upstream's open behaviour).
"""
import os
from dataclasses import dataclass
from pathlib import Path

import orjson
import zmq
from zmq.utils import z85

CREDENTIALS_FILE = "credentials.json"
ENV_SERVER_KEY = "QCG_PM_ZMQ_SERVER_KEY"
ENV_CLIENT_PUBLIC = "QCG_PM_ZMQ_CLIENT_PUBLIC"
ENV_CLIENT_SECRET = "QCG_PM_ZMQ_CLIENT_SECRET"
ENV_ADDRESS = "QCG_PM_ZMQ_ADDRESS"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


@dataclass(frozen=True)
class Credentials:
    server_public: str
    client_public: str
    client_secret: str
    server_secret: str | None = None  # only the service has it

    @classmethod
    def generate(cls) -> "Credentials":
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public.decode(), client_public.decode(), client_secret.decode(), server_secret.decode())

    def save(self, service_dir: Path) -> Path:
        path = Path(service_dir) / CREDENTIALS_FILE
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(self.__dict__))
        return path

    @classmethod
    def load(cls, service_dir: Path) -> "Credentials | None":
        path = Path(service_dir) / CREDENTIALS_FILE
        if not path.exists():
            return None
        data = orjson.loads(path.read_bytes())
        return cls(data["server_public"], data["client_public"], data["client_secret"])

    @staticmethod
    def remove(service_dir: Path) -> None:
        (Path(service_dir) / CREDENTIALS_FILE).unlink(missing_ok=True)

    @classmethod
    def from_env(cls, env=None) -> "Credentials | None":
        env = os.environ if env is None else env
        keys = env.get(ENV_SERVER_KEY), env.get(ENV_CLIENT_PUBLIC), env.get(ENV_CLIENT_SECRET)
        return cls(*keys) if all(keys) else None

    def client_env(self) -> dict:
        """What a task needs to talk to its manager."""
        return {ENV_SERVER_KEY: self.server_public, ENV_CLIENT_PUBLIC: self.client_public,
                ENV_CLIENT_SECRET: self.client_secret}

    def secure_client(self, sock: zmq.Socket) -> None:
        sock.curve_serverkey = self.server_public.encode()
        sock.curve_publickey = self.client_public.encode()
        sock.curve_secretkey = self.client_secret.encode()

    def secure_server(self, sock: zmq.Socket, domain: str) -> None:
        sock.zap_domain = domain.encode()
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret.encode()

    def keys_file(self, path: Path) -> Path:
        """The client key pair alone, for a node agent (its --curve-keys-file)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps({"public": self.client_public, "secret": self.client_secret}))
        return Path(path)


def public_key_bytes(public_z85: str) -> bytes:
    return z85.decode(public_z85.encode())


def client_env(address: str, credentials: "Credentials | None") -> dict:
    """What a process needs to talk to the service at `address`: the address, and the keys when
    the service authenticates (tasks of a manager, a governor's children and their tasks)."""
    env = {ENV_ADDRESS: address}
    if credentials is not None:
        env.update(credentials.client_env())
    return env
