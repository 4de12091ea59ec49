"""``edgeport backends``: what is installed, what works here, and why not."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from . import cli, current_registry
from ._output import console, print_json


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def backends(as_json: bool) -> None:
    """List installed backends and broken plugins."""
    registry = current_registry()
    rows = []
    for name, entry in registry.entries().items():
        availability = entry.availability()
        rows.append({
            "name": name,
            "plugin": entry.plugin,  # its entry point's name: what EDGEPORT_DISABLE_PLUGINS takes
            "distribution": entry.distribution,
            "version": entry.version,
            "toolchain": entry.toolchain(),
            "can_compile": availability.can_compile,
            "can_run": availability.can_run,
            "runs_on": availability.runs_on if availability.can_run else None,  # no run here, none to label
            "why": availability.why,
            "aliases": list(entry.aliases),
            "schemes": sorted(entry.backend.schemes),
        })
    broken = [{"plugin": b.plugin, "distribution": b.distribution, "error": b.error, "hint": b.hint}
              for b in registry.broken()]
    if as_json:
        print_json({"backends": rows, "broken": broken})
        return
    table = Table("backend", "distribution", "toolchain", "compile", "run", "runs on", "quantize", "why")
    for r in rows:
        table.add_row(escape(r["name"]), escape(f"{r['distribution']} {r['version']}"), escape(r["toolchain"]),
                      _mark(r["can_compile"]), _mark(r["can_run"]), escape(r["runs_on"] or "-"),
                      ", ".join(r["schemes"]) or "-", escape(r["why"]))
    console.print(table)
    for b in broken:
        console.print(f"[red]broken plugin[/red] {b['plugin']} ({b['distribution']}): {escape(b['error'])}")
        if b["hint"]:
            console.print(f"  hint: {escape(b['hint'])}")


def _mark(flag: bool) -> str:
    return "[green]yes[/green]" if flag else "[red]no[/red]"
