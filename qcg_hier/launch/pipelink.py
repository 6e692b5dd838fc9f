"""The manager's end of a local agent's pipes: the agent's stdin and stdout carry the same frames
as the agents' zmq socket, each after its length (4 bytes, big-endian).

A local agent is the service's own child: a pipe needs no encryption (nobody else holds it), and
it saves both processes a zmq I/O thread per message, which on a small machine is the latency of a
task start. Read by a loop reader; writes never block (what the pipe cannot take waits here)."""
import asyncio
import os

HEADER = 4
READS_PER_TURN = 16  # reads of up to 64 kB per turn of the event loop


class PipeChannel:
    def __init__(self, write_file, read_file, on_frames):
        """`on_frames(list of frames)`. The agent's end (it closed its stdout) closes the channel;
        the launcher learns of the agent's exit from the process itself."""
        self._files = (write_file, read_file)  # kept: their descriptors live as long as they do
        self.wfd, self.rfd = write_file.fileno(), read_file.fileno()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        self.on_frames = on_frames
        self._in = bytearray()
        self._out = bytearray()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.rfd, self._on_readable)
        self.closed = False

    def send(self, frame: bytes) -> None:
        if self.closed:
            return  # its descriptor numbers may already name other files
        data = len(frame).to_bytes(HEADER, "big") + frame
        if self._out:
            self._out += data  # behind what already waits
            return
        try:
            n = os.write(self.wfd, data)
        except BlockingIOError:
            n = 0
        except (BrokenPipeError, ValueError, OSError):
            return  # the agent is gone: its end of input tells us
        if n < len(data):
            self._out += data[n:]
            self._loop.add_writer(self.wfd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            n = os.write(self.wfd, self._out)
        except BlockingIOError:
            return
        except OSError:
            n = len(self._out)
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self.wfd)

    def _on_readable(self) -> None:
        buf = self._in
        ended = False
        for _ in range(READS_PER_TURN):
            try:
                data = os.read(self.rfd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data = b""
            if not data:
                ended = True
                break
            buf += data
        frames = []
        while len(buf) >= HEADER:
            size = int.from_bytes(buf[:HEADER], "big")
            if len(buf) < HEADER + size:
                break
            frames.append(bytes(buf[HEADER:HEADER + size]))
            del buf[:HEADER + size]
        if frames:
            self.on_frames(frames)
        if ended:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.rfd)
        if self._out:
            self._loop.remove_writer(self.wfd)
        for f in self._files:
            try:
                f.close()
            except OSError:
                pass
