"""`--show-progress`: a live line on a terminal, plain lines otherwise."""
import asyncio
import sys
import time

from ..core.states import JobState


class Progress:
    def __init__(self, stream=None, interval: float = 1.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.interval = interval if self.tty else max(interval, 5.0)
        self._task = None
        self._t0 = time.monotonic()
        self._last = None

    def start(self, service) -> None:
        self._t0 = time.monotonic()
        self._task = asyncio.ensure_future(self._loop(service))

    def update(self, service) -> None:
        pass  # the periodic loop reads the counters; nothing per event

    def line(self, service) -> str:
        c = service.core.it_counts
        done = c[JobState.SUCCEED]
        failed = c[JobState.FAILED] + c[JobState.OMITTED] + c[JobState.CANCELED]
        running = c[JobState.SCHEDULED] + c[JobState.EXECUTING]
        queued = c[JobState.QUEUED]
        elapsed = max(time.monotonic() - self._t0, 1e-9)
        rate = (done + failed) / elapsed
        eta = f"{queued / rate + running / rate:.0f}s" if rate > 0 and (queued or running) else "-"
        return (f"done {done}  failed {failed}  running {running}  queued {queued}  "
                f"rate {rate:.1f}/s  ETA {eta}")

    async def _loop(self, service) -> None:
        while True:
            self.emit(service)
            await asyncio.sleep(self.interval)

    def emit(self, service) -> None:
        text = self.line(service)
        if self.tty:
            self.stream.write("\r\033[K" + text)
        elif text != self._last:
            self.stream.write(text + "\n")
        self._last = text
        self.stream.flush()

    def stop(self, service=None) -> None:
        if self._task:
            self._task.cancel()
        if service is not None:
            self._last = None
            self.emit(service)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
