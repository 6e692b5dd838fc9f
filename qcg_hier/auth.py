"""Instance credentials: ZeroMQ CURVE keys, generated per service instance.

The service keeps a server key pair and one client key pair in
`<service dir>/credentials.json` (mode 0600, inside the 0700 service directory), and the
client's part alone in `client-keys.json` (0600). A request is executed only from a peer that
proves it holds the client secret key. Clients find the keys in the service directory, or
through QCG_PM_ZMQ_KEYS_FILE, the path of a client keys file that every task (and every child
of a governor) receives instead of the keys themselves: a task that writes its environment
where others can read it gives away a path, not a secret. Nothing is taken from a file or a
directory that another user owns, or that others may write. `--auth none` switches all of
this off (upstream's open behaviour).
"""
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zmq
from zmq.utils import z85

CREDENTIALS_FILE = "credentials.json"
CLIENT_KEYS_FILE = "client-keys.json"
ENV_KEYS_FILE = "QCG_PM_ZMQ_KEYS_FILE"
# the keys themselves in the environment: still read (set by hand), never given to tasks any more
ENV_SERVER_KEY = "QCG_PM_ZMQ_SERVER_KEY"
ENV_CLIENT_PUBLIC = "QCG_PM_ZMQ_CLIENT_PUBLIC"
ENV_CLIENT_SECRET = "QCG_PM_ZMQ_CLIENT_SECRET"
ENV_ADDRESS = "QCG_PM_ZMQ_ADDRESS"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class UntrustedPathError(ValueError):
    """A service directory, address or keys file that another user owns or others may write."""


def check_private(path: Path, secret: bool = False) -> None:
    """Refuse `path` unless this user owns it and neither group nor others may write it (nor, for
    a secret, read it): another user could have planted it, or could change it."""
    info = os.stat(path)
    if info.st_uid != os.geteuid():
        raise UntrustedPathError(f"{path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()}): "
                                 f"refusing to use it")
    mask = 0o077 if secret else 0o022
    if info.st_mode & mask:
        who = "readable or writable" if secret else "writable"
        raise UntrustedPathError(f"{path} is {who} by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
                                 f"refusing to use it")


@dataclass(frozen=True)
class Credentials:
    server_public: str
    client_public: str
    client_secret: str
    server_secret: str | None = None  # only the service has it
    source: Path | None = field(default=None, compare=False)  # the client keys file they came from

    @classmethod
    def generate(cls) -> "Credentials":
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public.decode(), client_public.decode(), client_secret.decode(), server_secret.decode())

    def save(self, service_dir: Path) -> "Credentials":
        """The service's keys and, beside them, the client's part alone (what tasks are pointed to);
        returns these credentials with that file as their source."""
        keys = {"server_public": self.server_public, "client_public": self.client_public,
                "client_secret": self.client_secret}
        _write_private(Path(service_dir) / CREDENTIALS_FILE, {**keys, "server_secret": self.server_secret})
        return self.client_file(Path(service_dir) / CLIENT_KEYS_FILE)

    def client_file(self, path: Path) -> "Credentials":
        """Write the client's part alone to `path` (0600); these credentials with it as their source."""
        _write_private(path, {"server_public": self.server_public, "client_public": self.client_public,
                              "client_secret": self.client_secret})
        return Credentials(self.server_public, self.client_public, self.client_secret, self.server_secret,
                           Path(path))

    @classmethod
    def load(cls, service_dir: Path) -> "Credentials | None":
        """The client keys in a service directory (None: it has none, the service runs --auth none).
        Raises UntrustedPathError for a directory or file that is not this user's alone."""
        service_dir = Path(service_dir)
        check_private(service_dir)
        for name in (CLIENT_KEYS_FILE, CREDENTIALS_FILE):
            path = service_dir / name
            if path.exists():
                return cls.from_file(path)
        return None

    @classmethod
    def from_file(cls, path: Path) -> "Credentials":
        check_private(path, secret=True)
        data = orjson.loads(Path(path).read_bytes())
        return cls(data["server_public"], data["client_public"], data["client_secret"], source=Path(path))

    @staticmethod
    def remove(service_dir: Path) -> None:
        for name in (CREDENTIALS_FILE, CLIENT_KEYS_FILE):
            (Path(service_dir) / name).unlink(missing_ok=True)

    @classmethod
    def from_env(cls, env=None) -> "Credentials | None":
        """From QCG_PM_ZMQ_KEYS_FILE (what tasks get), else from the keys themselves, set by hand."""
        env = os.environ if env is None else env
        if env.get(ENV_KEYS_FILE):
            return cls.from_file(Path(env[ENV_KEYS_FILE]))
        keys = env.get(ENV_SERVER_KEY), env.get(ENV_CLIENT_PUBLIC), env.get(ENV_CLIENT_SECRET)
        return cls(*keys) if all(keys) else None

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


def read_service_dir(service_dir: Path) -> tuple:
    """(address, client credentials or None) of the service in a service directory, after checking
    that the directory and its files are this user's alone. Raises UntrustedPathError."""
    service_dir = Path(service_dir)
    check_private(service_dir)
    address_file = service_dir / "address"
    check_private(address_file)
    return address_file.read_text().strip(), Credentials.load(service_dir)


def _write_private(path: Path, data: dict) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(orjson.dumps(data))


def client_env(address: str, credentials: "Credentials | None") -> dict:
    """What a process needs to talk to the service at `address`: the address, and the path of the
    client keys file when the service authenticates (tasks of a manager, a governor's children
    and their tasks); the variables of the keys themselves are cleared."""
    env = {ENV_ADDRESS: address, ENV_SERVER_KEY: None, ENV_CLIENT_PUBLIC: None, ENV_CLIENT_SECRET: None}
    if credentials is not None:
        if credentials.source is None:
            raise ValueError("credentials without a keys file cannot be handed on")
        env[ENV_KEYS_FILE] = str(credentials.source)
    else:
        env[ENV_KEYS_FILE] = None
    return env
