"""`qcg-hier`: operator commands (status, report)."""
import sys
import time

import click
import orjson

from ..api.errors import QCGPJMAError
from . import gantt, report, status
from .runlog import load_run


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """qcg-hier operator tools."""


@main.command("status")
@click.argument("target", required=False)
@click.option("--watch", is_flag=True, help="Refresh until the service ends (Ctrl-C stops).")
@click.option("--interval", type=float, default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: states, cores, nodes, rate, eta.")
def status_cmd(target, watch, interval, as_json):
    """Live status of a service: TARGET is its working directory, service directory or address."""
    previous = None
    while True:
        try:
            data, live = status.fetch(target)
        except (OSError, QCGPJMAError) as exc:  # no service there, or an address that does not answer
            raise click.ClickException(str(exc))
        now = time.monotonic()
        done = sum((data.get("States") or {}).get(s, 0) for s in status.FINAL)
        rate = None
        if previous is not None and now > previous[0]:
            rate = (done - previous[1]) / (now - previous[0])
        summary = status.summary(data, live, rate)
        if as_json:
            click.echo(orjson.dumps(summary).decode())
        else:
            if watch and sys.stdout.isatty():
                click.echo("\033[2J\033[H", nl=False)
            click.echo(status.text(summary), nl=False)
        if not watch or not live:
            return
        previous = (now, done)
        time.sleep(interval)


def _load(wd):
    try:
        return load_run(wd)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc))


def _emit(text: str, output) -> None:
    if output:
        try:
            with open(output, "w") as f:
                f.write(text)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}")
    else:
        click.echo(text, nl=False)


def _emit_data(data: dict, as_text, as_json: bool, output) -> None:
    _emit(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n" if as_json else as_text(data), output)


@main.group("report")
def report_group():
    """Reports of a run, from its files (works on finished and running services)."""


@report_group.command("stats")
@click.argument("wd")
@click.option("-o", "--output", help="Write to this file.")
@click.option("--json", "as_json", is_flag=True)
def stats_cmd(wd, output, as_json):
    """Jobs, iterations, states, run and queue times, core utilisation, overheads."""
    _emit_data(report.stats(_load(wd)), report.stats_text, as_json, output)


@report_group.command("jobs")
@click.argument("wd")
@click.option("--state", multiple=True, help="Only these states (repeatable).")
@click.option("--node", help="Only tasks that ran on this node.")
@click.option("--name", help="Only these jobs or iterations (glob, e.g. 'sweep*').")
@click.option("--sort", type=click.Choice(sorted(report.SORT_KEYS)), default="start", show_default=True)
@click.option("-o", "--output", help="Write to this file.")
def jobs_cmd(wd, state, node, name, sort, output):
    """Tasks (iterations and jobs) with their state, times, cores and nodes."""
    _emit(report.jobs_table(report.jobs(_load(wd), state, node, name, sort)), output)


@report_group.command("efficiency")
@click.argument("wd")
@click.option("-o", "--output", help="Write to this file.")
@click.option("--json", "as_json", is_flag=True)
def efficiency_cmd(wd, output, as_json):
    """Busy core-seconds over available core-seconds, overall and per node."""
    _emit_data(report.efficiency(_load(wd)), report.efficiency_text, as_json, output)


@report_group.command("gantt")
@click.argument("wd")
@click.option("-o", "--output", default="gantt.svg", show_default=True,
              help="Picture file: .svg (always available) or .png (needs the [plot] extra).")
@click.option("--lanes", type=click.Choice(["core", "node"]), default="core", show_default=True)
def gantt_cmd(wd, output, lanes):
    """A gantt picture: one lane per core or node, tasks coloured by state."""
    run = _load(wd)
    if output.lower().endswith(".png"):
        try:
            gantt.png(run, output, lanes)
        except RuntimeError as exc:
            raise click.ClickException(str(exc))
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}")
    else:
        _emit(gantt.svg(run, lanes), output)
    click.echo(f"wrote {output}")
