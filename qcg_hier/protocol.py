"""Every message that crosses a process boundary, encoded in one place.

* Requests/responses: upstream QCG-PilotJob's envelope `{"code": 0|1, "message"?, "data"?}`.
* Manager <-> node agent: one frame per batch, an orjson array of messages, each an
  array whose first element is its kind (see agents/agent.py for the full list):
  manager -> agent: ["env", {...}], ["run", tid, spec], ["cancel", tid, grace], ["ping", x], ["exit"]
  agent -> manager: ["ready", {...}], ["done", tid, pid, rc, start, end, cpu, maxrss_kb, reason, error],
                    ["pong", x], ["hb", t], ["bye", node]
  Agents on nodes: zmq frames; a local agent (the service's child): its stdin/stdout, each frame
  after its length (4 bytes, big-endian; launch/pipelink.py).
* Governor <-> child (qcg_hier/governor/): the same framing.
  governor -> child: ["job", description], ["give", name, [[a, b), ...]], ["cancel", name, [its]],
                     ["forget", name], ["hb"], ["exit", why]
  child -> governor: ["hello"], ["exe", {name: [its]}], ["fin", [[name, it, state, rc, pid, pname, start,
                     end, cpu, maxrss_kb, where, error, wd], ...]], ["hb", used cores],
                     ["back", {name: [its]}], ["bye", how]
  (a child first registers with upstream's `register` request at the governor's address)
"""
import orjson

OK_CODE = 0
ERROR_CODE = 1


def ok(data=None, message: str | None = None) -> dict:
    out = {"code": OK_CODE}
    if message is not None:
        out["message"] = message
    if data is not None:
        out["data"] = data
    return out


def error(message: str) -> dict:
    return {"code": ERROR_CODE, "message": message}


def encode(obj) -> bytes:
    return orjson.dumps(obj)


def decode(raw: bytes | str):
    return orjson.loads(raw)
