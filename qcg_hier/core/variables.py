"""Variables in job descriptions: `${name}` or `$name` for the names we define.

Only our own variable names are substituted. Anything else written with a dollar
(`$HOME`, `${PATH}`, `$1`, and the shell's `$$`) reaches the program or bash
untouched. A doubled dollar before one of our names escapes one substitution phase,
as upstream's two passes do: at submit `$${it}` becomes `${it}`, which the launch
phase then replaces by the iteration number; `$${jname}` ends as the text `${jname}`
(no later phase knows `jname`); `$$${it}` ends as the text `${it}`. Values are
inserted as text into strings (never into JSON text), so a value containing a quote
cannot break the description.
"""
import re

SUBMIT_VARIABLES = ("rcnt", "uniq", "sname", "date", "time", "dateTime", "jname")
LAUNCH_VARIABLES = ("root_wd", "ncores", "nnodes", "nlist", "it", "itval")
ALL_VARIABLES = SUBMIT_VARIABLES + LAUNCH_VARIABLES


def _pattern(names) -> re.Pattern:
    alt = "|".join(sorted(names, key=len, reverse=True))
    # group 1: the escaping extra dollar; group 2/3: braced / bare name
    return re.compile(r"(\$?)\$(?:\{(" + alt + r")\}|(" + alt + r")(?![A-Za-z0-9_]))")


# the submit phase sees every name (to consume escapes before launch-time names too)
_SUBMIT_RE = _pattern(ALL_VARIABLES)
_LAUNCH_RE = _pattern(LAUNCH_VARIABLES)


def _substitute(regex: re.Pattern, text: str, values: dict, phase_names) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(2) or m.group(3)
        if m.group(1):  # `$${name}`: escaped for this phase: one dollar is consumed
            return m.group(0)[1:]
        value = values.get(name) if name in phase_names else None
        return m.group(0) if value is None else str(value)

    return regex.sub(repl, text)


def substitute(text: str, values: dict, launch: bool = False) -> str:
    """Replace the submit-time (or, with `launch`, the launch-time) variables in one string."""
    if "$" not in text:
        return text
    if launch:
        return _substitute(_LAUNCH_RE, text, values, LAUNCH_VARIABLES)
    return _substitute(_SUBMIT_RE, text, values, SUBMIT_VARIABLES)


def substitute_tree(obj, values: dict, launch: bool = False):
    """Substitute in every string of a JSON-like tree (dict keys are left alone)."""
    if isinstance(obj, str):
        return substitute(obj, values, launch)
    if isinstance(obj, list):
        return [substitute_tree(v, values, launch) for v in obj]
    if isinstance(obj, dict):
        return {k: substitute_tree(v, values, launch) for k, v in obj.items()}
    return obj


def uses_launch_variables(obj) -> bool:
    """Whether any string of the tree refers to a launch-time variable (so per-task work is needed)."""
    if isinstance(obj, str):
        return "$" in obj and _LAUNCH_RE.search(obj) is not None
    if isinstance(obj, list):
        return any(uses_launch_variables(v) for v in obj)
    if isinstance(obj, dict):
        return any(uses_launch_variables(v) for v in obj.values())
    return False
