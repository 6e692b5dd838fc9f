"""The gantt picture of a run: one lane per core (or per node), tasks coloured by state.

SVG is written by hand (a plain install has it); PNG needs matplotlib (`pip install qcg-hier[plot]`).
"""
from html import escape

from .runlog import Run

COLOURS = {"SUCCEED": "#2e9e44", "FAILED": "#d62728", "CANCELED": "#ff9f1c", "OMITTED": "#9467bd",
           "EXECUTING": "#1f77b4", "SCHEDULED": "#8ab6e0", "QUEUED": "#c7c7c7"}


def lanes(run: Run, per: str = "core") -> tuple[list[str], list[tuple]]:
    """(lane names, [(lane index, start, end, state, task name)]) relative to the run's start."""
    span = run.span
    t0 = span[0] if span else 0.0
    keys = set()
    bars = []
    for task in run.tasks:
        if not task.started:
            continue
        end = task.finished or task.started
        targets = {f"{n}[{s}]" if per == "core" else n for n, s in task.cores} or {"?"}
        keys.update(targets)
        bars.extend((lane, task.started - t0, end - t0, task.state, task.name) for lane in targets)

    def order(key: str):
        node, _, slot = key.partition("[")
        return node, int(slot.rstrip("]")) if slot.rstrip("]").isdigit() else 0

    names = sorted(keys, key=order)
    index = {name: i for i, name in enumerate(names)}
    return names, [(index[lane], s, e, st, n) for lane, s, e, st, n in bars]


def svg(run: Run, per: str = "core") -> str:
    names, bars = lanes(run, per)
    span = run.span
    total = max((e for _, _, e, _, _ in bars), default=0.0)
    if span:
        total = max(total, span[1] - span[0])
    total = total or 1.0
    lane_h, left, top, width = 14, 110, 30, 900
    height = top + lane_h * max(len(names), 1) + 40
    x = lambda t: left + width * t / total  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 130}" height="{height}" '
           f'font-family="sans-serif" font-size="10">',
           f'<text x="{left}" y="16" font-size="12">{escape(str(run.service_dir.name))}: '
           f'{len(run.tasks)} tasks on {len(names)} {"cores" if per == "core" else "nodes"}, {total:.2f} s</text>']
    for i, name in enumerate(names):
        y = top + i * lane_h
        out.append(f'<text x="{left - 4}" y="{y + lane_h - 4}" text-anchor="end">{escape(name)}</text>')
        out.append(f'<line x1="{left}" y1="{y + lane_h}" x2="{left + width}" y2="{y + lane_h}" stroke="#eee"/>')
    for lane, start, end, state, name in bars:
        y = top + lane * lane_h + 1
        w = max(x(end) - x(start), 0.5)
        out.append(f'<rect x="{x(start):.2f}" y="{y}" width="{w:.2f}" height="{lane_h - 2}" '
                   f'fill="{COLOURS.get(state, "#777")}" stroke="white" stroke-width="0.6"><title>{escape(name)} {state} '
                   f'{end - start:.3f} s</title></rect>')
    axis_y = top + lane_h * max(len(names), 1) + 4
    digits = 0 if total >= 20 else 1 if total >= 2 else 2  # distinct tick labels on short runs too
    for k in range(11):
        t = total * k / 10
        out.append(f'<text x="{x(t):.1f}" y="{axis_y + 12}" text-anchor="middle">{t:.{digits}f}s</text>')
    for k, (state, colour) in enumerate(c for c in COLOURS.items() if c[0] in {b[3] for b in bars}):
        out.append(f'<rect x="{left + width + 12}" y="{top + k * 16}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{left + width + 26}" y="{top + k * 16 + 9}">{state}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def png(run: Run, path: str, per: str = "core") -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("PNG output needs matplotlib: pip install 'qcg-hier[plot]' (SVG needs nothing)") from None
    names, bars = lanes(run, per)
    fig, ax = plt.subplots(figsize=(12, max(2.5, 0.22 * len(names) + 1.2)))
    for lane, start, end, state, _ in bars:
        ax.barh(lane, max(end - start, 1e-4), left=start, height=0.8, color=COLOURS.get(state, "#777"),
                edgecolor="white", linewidth=0.6)  # consecutive tasks on a lane stay apart
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the service started")
    ax.set_title(f"{run.service_dir.name}: {len(run.tasks)} tasks")
    used = [s for s in COLOURS if s in {b[3] for b in bars}]
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=COLOURS[s]) for s in used], labels=used,
              loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
