"""``edgeport cache``: what edgeport's per-user cache holds, its bound, and clearing it."""

from __future__ import annotations

import click
from rich.markup import escape
from rich.table import Table

from .. import cache as store
from . import cli
from ._output import console, print_json


@cli.command()
@click.option("--clear", is_flag=True, help="Delete every cached file (each is rebuilt when next needed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cache(clear: bool, as_json: bool) -> None:
    """Show the cache edgeport rebuilds on demand (XNNPACK's packed weights, the native
    LLM runner): where it is, what each kind holds, and the size each kind is kept within
    (EDGEPORT_CACHE_MAX, least recently used files deleted first)."""
    root, limit = store.cache_dir(), store.size_limit()
    if clear:
        freed = store.clear()
        if as_json:
            print_json({"directory": str(root), "freed_bytes": freed})
        else:
            console.print(f"freed {_mib(freed)} from {escape(str(root))}")
        return
    rows = [{"kind": kind, "files": len(found), "bytes": sum(e.size for e in found)}
            for kind in store.kinds() for found in [store.entries(kind)]]
    if as_json:
        print_json({"directory": str(root), "limit_bytes": limit, "kinds": rows})
        return
    console.print(f"{escape(str(root))}: each kind kept within {_mib(limit)} ({store.LIMIT_ENV})")
    table = Table("kind", "files", "size")
    for r in rows:
        table.add_row(r["kind"], str(r["files"]), _mib(r["bytes"]))
    console.print(table)


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"
