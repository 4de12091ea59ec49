"""``edgeport conformance NAME``: the conformance kit on one installed backend, as a
coverage table (the same run as ``pytest --edgeport-backend NAME``)."""

from __future__ import annotations

import itertools

import click
from rich.markup import escape
from rich.table import Table

from ..errors import EdgeportError
from ..lowering import log as lowering_log
from ..testing.coverage import coverage_html, coverage_json
from ..testing.kit import KitRun, Verdict, backend_named, checked_backend, kit_cases, parse_option_items, run_kit
from ..testing.time_limit import CASE_TIME_LIMIT, checked_time_limit
from . import cli, current_registry
from ._output import check_writable, console, print_json, progress, said_below

_STYLE = {Verdict.PASSED: "green", Verdict.DECLINED: "dim", Verdict.NOT_RUN: "yellow", Verdict.FAILED: "red"}


def names_word(case: str, word: str) -> bool:
    """Whether ``word`` is a whole part of the case's name between underscores (or
    several: "avg_pool2d"): "add" as a substring picked every *_padding case too."""
    return f"_{word}_" in f"_{case}_"


@cli.command()
@click.argument("name")
@click.option("--option", "option_items", multiple=True, metavar="KEY=VALUE", help="An option of the backend.")
@click.option("--case", "case_filter", default=None, metavar="WORDS",
              help="Only cases whose name contains one of these comma-separated words, whole between "
                   "underscores: 'add' picks add_broadcast and int8_add, not the *_padding cases.")
@click.option("--json", "as_json", is_flag=True, help="Print the coverage as JSON (schema: docs/conformance.md).")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the coverage table as a web page.")
@click.option("--timeout", "time_limit", type=float, default=CASE_TIME_LIMIT, show_default=True, metavar="SECONDS",
              help="Fail a case whose compile(), load() or run() has not finished after this long, and go on.")
@click.pass_context
def conformance(ctx: click.Context, name: str, option_items: tuple[str, ...], case_filter: str | None,
                as_json: bool, html_path: str | None, time_limit: float) -> None:
    """Run edgeport's conformance cases on backend NAME: per case and dtype, delegated
    or declined (why), and the error against eager. Exits 1 if any case failed, or if
    none passed and none is not-run here (it declined everything)."""
    check_writable(html_path)
    backend = backend_named(name, current_registry())
    options = parse_option_items(backend, option_items)
    time_limit = checked_time_limit(time_limit)
    checked_backend(backend, options, time_limit)
    words = [w.strip() for w in (case_filter or "").split(",") if w.strip()]
    cases = [c for c in kit_cases() if not words or any(names_word(c.name, w) for w in words)]
    if not cases:  # a typo would pass a CI that checked nothing
        raise EdgeportError(f"no conformance case name contains {' or '.join(map(repr, words))} as a whole word",
                            hint="case names: " + ", ".join(c.name for c in kit_cases()[:12]) + ", ...")
    done = itertools.count(1)
    with progress(not as_json) as show, said_below(lowering_log.name):  # each case's line in the table says it
        run = run_kit(backend, options, cases, time_limit=time_limit,
                      progress=show and (lambda outcome: show(f"{backend.name}: case {next(done) + 1}/{len(cases)}")))
    if html_path:
        with open(html_path, "w") as f:
            f.write(coverage_html(run))
    if as_json:
        print_json(coverage_json(run))
    else:
        _print_table(run)
    if run.proves_nothing:  # after the table, or on stderr after the JSON (which stays JSON)
        click.echo(f"{run.backend}: {run.proves_nothing}", err=as_json)
    if run.count(Verdict.FAILED) or run.proves_nothing:
        ctx.exit(1)


def _print_table(run: KitRun) -> None:
    table = Table("case", "dtype", "verdict", "taken", "error / tolerance", "why")
    for o in run.outcomes:
        error = "-" if o.error is None else f"{o.error:.2g} / {o.tolerance:.2g} {o.unit}"
        style = _STYLE[o.verdict]
        table.add_row(escape(o.case), o.dtype, f"[{style}]{o.verdict.value}[/{style}]", f"{o.delegated:.0%}",
                      error, escape(o.why))
    console.print(table)
    whole = sum(o.verdict is Verdict.PASSED and o.delegated == 1.0 for o in run.outcomes)
    where = "" if run.availability.can_run else f"; cannot run here ({run.availability.why}): compile checked only"
    console.print(f"{run.backend} {run.version}: {len(run.outcomes)} cases, {run.count(Verdict.PASSED)} passed "
                  f"({whole} taken whole), {run.count(Verdict.DECLINED)} declined, "
                  f"{run.count(Verdict.NOT_RUN)} not run here, {run.count(Verdict.FAILED)} failed{escape(where)}")
