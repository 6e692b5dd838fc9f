"""Parsing of node descriptions: the `--nodes` option, Slurm hostlists, CPU lists.

All pure string work, so the odd forms are unit-tested without Slurm.
"""
import re
from dataclasses import dataclass, field

from .errors import ResourceSpecError


@dataclass(frozen=True)
class NodeSpec:
    """One node as described by the user or by Slurm, before scheduling state is added."""

    name: str
    cores: int
    core_ids: tuple = ()  # OS CPU ids (or Slurm slot ids) to bind to; empty: no binding
    gpus: tuple = ()  # GPU ids usable on this node
    mem_mb: int = 0  # memory for nodeCrs.mem accounting; 0: not accounted
    tags: tuple = field(default=())


def parse_nodes_option(spec: str, gpus: tuple = (), mem_mb: int = 0) -> list[NodeSpec]:
    """`--nodes` as upstream: `[name:]cores[,[name:]cores...]`; unnamed nodes are n0, n1, ..."""
    if not isinstance(spec, str) or not spec.strip():
        raise ResourceSpecError("empty --nodes specification")
    nodes = []
    seen = set()
    for idx, part in enumerate(spec.split(",")):
        part = part.strip()
        name, sep, count = part.rpartition(":")
        if not sep:
            name = f"n{idx}"
        if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ResourceSpecError(f"invalid node name {name!r} in --nodes {spec!r}")
        try:
            cores = int(count)
        except ValueError:
            raise ResourceSpecError(f"invalid core count {count!r} in --nodes {spec!r}") from None
        if cores <= 0:
            raise ResourceSpecError(f"node {name} must have at least one core (--nodes {spec!r})")
        if name in seen:
            raise ResourceSpecError(f"node {name} given twice in --nodes {spec!r}")
        seen.add(name)
        nodes.append(NodeSpec(name=name, cores=cores, gpus=tuple(gpus), mem_mb=mem_mb))
    return nodes


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ResourceSpecError(f"unbalanced ']' in hostlist {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ResourceSpecError(f"unbalanced '[' in hostlist {text!r}")
    parts.append(text[start:])
    return [p for p in parts if p]


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts e.g. '²', which int() rejects."""
    return text.isascii() and text.isdigit()


def _expand_range_list(body: str, hostlist: str) -> list[str]:
    """`001-003,7` -> ['001','002','003','7'], keeping zero padding per range."""
    out = []
    for item in body.split(","):
        item = item.strip()
        lo, dash, hi = item.partition("-")
        if not _is_number(lo) or (dash and not _is_number(hi)):
            raise ResourceSpecError(f"invalid range {item!r} in hostlist {hostlist!r}")
        if not dash:
            out.append(lo)
            continue
        width = len(lo) if lo.startswith("0") else 0
        a, b = int(lo), int(hi)
        if b < a:
            raise ResourceSpecError(f"descending range {item!r} in hostlist {hostlist!r}")
        out.extend(str(n).zfill(width) for n in range(a, b + 1))
    return out


def expand_hostlist(hostlist: str) -> list[str]:
    """Expand a Slurm compressed hostlist such as `n[001-016,020],gpu[1-2]` or `r[1-2]-n[1-2]`."""
    if not isinstance(hostlist, str) or not hostlist.strip():
        raise ResourceSpecError("empty hostlist")
    names: list[str] = []
    for part in _split_top_level(hostlist.strip()):
        expansions = [""]
        pos = 0
        for m in re.finditer(r"\[([^\]]*)\]", part):
            prefix = part[pos:m.start()]
            values = _expand_range_list(m.group(1), hostlist)
            expansions = [e + prefix + v for e in expansions for v in values]
            pos = m.end()
        tail = part[pos:]
        if "[" in tail or "]" in tail:
            raise ResourceSpecError(f"malformed hostlist {hostlist!r}")
        names.extend(e + tail for e in expansions)
    return names


def expand_counts(spec: str) -> list[int]:
    """Expand Slurm per-node counts: `4(x2),2` -> [4, 4, 2]."""
    if not isinstance(spec, str) or not spec.strip():
        raise ResourceSpecError("empty per-node count list")
    counts = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise ResourceSpecError(f"invalid per-node count {item!r} in {spec!r}")
        counts.extend([int(m.group(1))] * (int(m.group(2)) if m.group(2) else 1))
    return counts


def compress_counts(counts: list[int]) -> str:
    """Inverse of expand_counts: [2, 2, 2, 1] -> `2(x3),1` (Slurm's format)."""
    out = []
    i = 0
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        out.append(f"{counts[i]}(x{j - i})" if j - i > 1 else str(counts[i]))
        i = j
    return ",".join(out)


def slurm_nodes(nodelist: str, cpus_per_node: str, limit_begin: int | None = None,
                limit_end: int | None = None) -> list[NodeSpec]:
    """Nodes of an allocation from SLURM_JOB_NODELIST and a per-node slot count list."""
    names = expand_hostlist(nodelist)
    counts = expand_counts(cpus_per_node)
    if len(counts) == 1 and len(names) > 1:
        counts = counts * len(names)
    if len(counts) != len(names):
        raise ResourceSpecError(
            f"{len(names)} nodes in {nodelist!r} but {len(counts)} per-node counts in {cpus_per_node!r}")
    nodes = [NodeSpec(name=n, cores=c) for n, c in zip(names, counts)]
    return nodes[limit_begin:limit_end]
