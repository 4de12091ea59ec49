"""``edgeport backends``: what is installed, what works here, and why not."""

from __future__ import annotations

import click
from rich.table import Table

from ..plugins import default_registry
from . import cli
from ._output import console, print_json


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backends(as_json: bool) -> None:
    """List installed backends and broken plugins."""
    registry = default_registry()
    rows = []
    for name, entry in registry.entries().items():
        availability = entry.backend.availability()
        rows.append({
            "name": name,
            "distribution": entry.distribution,
            "version": entry.version,
            "toolchain": entry.backend.version,
            "can_compile": availability.can_compile,
            "can_run": availability.can_run,
            "runs_on": availability.runs_on,
            "why": availability.why,
            "aliases": list(entry.aliases),
            "schemes": sorted(entry.backend.schemes),
        })
    broken = [{"plugin": b.plugin, "distribution": b.distribution, "error": b.error} for b in registry.broken()]
    if as_json:
        print_json({"backends": rows, "broken": broken})
        return
    table = Table("backend", "distribution", "toolchain", "compile", "run", "runs on", "quantize", "why")
    for r in rows:
        table.add_row(r["name"], f"{r['distribution']} {r['version']}", r["toolchain"], _mark(r["can_compile"]),
                      _mark(r["can_run"]), r["runs_on"], ", ".join(r["schemes"]) or "-", r["why"])
    console.print(table)
    for b in broken:
        console.print(f"[red]broken plugin[/red] {b['plugin']} ({b['distribution']}): {b['error']}")


def _mark(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"
