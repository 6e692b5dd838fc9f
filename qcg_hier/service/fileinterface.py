"""The batch file interface: a JSON list of requests, handled in order; replies go to service.log."""
import asyncio
import logging

import orjson

log = logging.getLogger("qcg_hier")


class BatchFileError(Exception):
    pass


def load_requests(path) -> list:
    try:
        with open(path, "rb") as f:
            data = orjson.loads(f.read())
    except FileNotFoundError:
        raise BatchFileError(f"request file {path} does not exist") from None
    except orjson.JSONDecodeError as exc:
        raise BatchFileError(f"request file {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise BatchFileError(f"cannot read request file {path}: {exc}") from None
    if not isinstance(data, list):
        raise BatchFileError(f"request file {path} must hold a JSON list of requests, got {type(data).__name__}")
    return data


class FileInterface:
    name = "FILE"
    read_to_end = True  # the service does not stop before every request of the file is answered

    CHANGING = frozenset(("submit", "cancelJob", "removeJob", "control", "finish"))

    def __init__(self, path, resume_after: int = -1):
        self.path = path
        self.resume_after = resume_after  # --resume: requests up to this index were handled already
        self.finished = False
        self.failed = False

    async def run(self, service) -> None:
        try:
            requests = load_requests(self.path)
        except BatchFileError as exc:
            log.error("%s", exc)
            print(f"qcg-pm-service: error: {exc}", flush=True)
            self.failed = True
            requests = []
        for index, request in enumerate(requests):
            if index <= self.resume_after:
                continue
            if not service.launcher.ready and not service.core.all_finished():
                # jobs are waiting: let them start before the next request looks at or cancels them
                await self._wait_ready(service)
            response = service.handle(request)
            if isinstance(response, asyncio.Future):
                response = await response
            log.info("file request %d (%s): %s", index + 1,
                     request.get("request") if isinstance(request, dict) else type(request).__name__,
                     orjson.dumps(response).decode())
            service.after_reply()
            if response.get("code"):
                log.error("file request %d failed: %s", index + 1, response.get("message"))
            elif isinstance(request, dict) and request.get("request") in self.CHANGING:
                service.file_progress(index)
            # as upstream, requests are handled one at a time: the scheduling pass a request
            # asked for runs (and exits are handled) before the next request is served
            await asyncio.sleep(0)
        self.finished = True
        service.interface_finished()

    @staticmethod
    async def _wait_ready(service) -> None:
        limit = float(getattr(service.config, "nl_init_timeout", 600) or 600)
        deadline = asyncio.get_running_loop().time() + limit
        while not service.launcher.ready and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)  # the scheduling pass that readiness asked for runs first

    async def close(self) -> None:
        pass
