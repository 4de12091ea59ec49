"""``edgeport explain``: where every node runs, and each backend's reason when it declined."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Mapping

import click
from rich.markup import escape
from rich.table import Table

from ..backend import Availability
from ..devtools.html import ops_by_backend, quantization_lines, render_program, share
from ..errors import UnknownBackendError
from ..manifest import PORTABLE, QUANTIZATION_OPS, ArtifactInfo, MethodPlan, delegated_plumbing
from ..plugins import Registry
from ..program import Program, read_program_file
from ..torch_steps import PortableStep, describe_steps, portable_steps
from . import cli, current_registry
from ._output import check_writable, console, print_json
from .run import method_plan


def print_quantization(method: dict[str, Any]) -> None:
    """The scheme, what each backend did with it, and the calibration cost (`method`: a
    method's placement report, `Program.report`)."""
    for line in quantization_lines(method):
        console.print(f"[yellow]{escape(line.text)}[/yellow]" if line.warning else line.text, highlight=False,
                      markup=line.warning)


def print_summary(report: dict[str, Any]) -> None:
    """One line per backend: how many ops and partitions it got (its quantize/dequantize
    nodes apart, counted as the HTML page and the node table do), and how long their
    compile calls took (programs written before edgeport timed them have no such column)."""
    nodes = ops_by_backend(report)
    plumbing = Counter(n["backend"] for n in report["nodes"] if delegated_plumbing(n))
    parts = Counter(p["backend"] for p in report["partitions"])
    seconds: dict[str, float] = {}
    for p in report["partitions"]:
        if p.get("compile_s") is not None and p["backend"] != PORTABLE:
            seconds[p["backend"]] = seconds.get(p["backend"], 0.0) + p["compile_s"]
    total = sum(nodes.values())
    table = Table("backend", "nodes", "share", *(("q/dq",) if plumbing else ()), "partitions",
                  *(("compile s",) if seconds else ()))
    for backend in dict.fromkeys([*(b for b, _ in nodes.most_common()), *plumbing]):
        qdq = (str(plumbing[backend]),) if plumbing else ()
        timed = (f"{seconds[backend]:.2f}" if backend in seconds else "",) if seconds else ()
        table.add_row(backend, str(nodes[backend]), share(nodes[backend], total), *qdq, str(parts[backend]), *timed)
    console.print(table)
    fallbacks = [p for p in report["partitions"] if p.get("fallback")]
    for p in fallbacks:
        console.print(f"[yellow]partition {p['id']} fell back to portable[/yellow]: {p['fallback']}")


@cli.command()
@click.argument("program", type=click.Path(exists=True, dir_okay=False))
@click.option("--method", default=None,
              help="Method to explain (default: forward, or every method of a program without one, as an LLM's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {nodes: [...], partitions: [...], values: {...}}.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Write a self-contained HTML page: the graph coloured by backend, summary, declined nodes.")
@click.option("--all", "show_all", is_flag=True,
              help="List a quantized program's quantize/dequantize nodes too (the table leaves them out).")
def explain(program: str, method: str | None, as_json: bool, html_path: str | None, show_all: bool) -> None:
    """Show the placement of every node and why backends declined what they did."""
    check_writable(html_path, reads=(program,))
    prog = Program(*read_program_file(program))  # not `load`: a program that cannot run here is explained too
    if html_path:
        method, _ = method_plan(prog, method)  # a page draws one graph
        page = render_program(prog, method, title=f"edgeport placement: {os.path.basename(program)}")
        with open(html_path, "w", encoding="utf-8") as f:
            f.write(page)
        if not as_json:
            console.print(f"wrote {html_path}")
            return
    names = explained_methods(prog, method)
    if as_json:
        reports = {name: method_json(prog, name) for name in names}
        print_json(reports[names[0]] if method is not None or len(names) == 1 else {"methods": reports})
        return
    for name in names:
        if len(names) > 1:
            console.rule(f"method {name}")
        print_method(prog, name, show_all)


def explained_methods(program: Program, method: str | None) -> list[str]:
    """The method asked for, else the default one, else (a program of several methods, none
    of them "forward": an LLM's prefill and decode) every method, in the program's order."""
    if method is None and program.default_method not in program.methods:
        return program.methods
    return [method_plan(program, method)[0]]


def method_json(program: Program, method: str) -> dict[str, Any]:
    """`--json`'s object for one method: its placement report and what the table adds."""
    plan = program.plan(method)
    return {**program.report(method), "torch_free": not portable_steps(program.manifest),
            "state_writes": state_writes(plan),
            "runs_here": runs_here(plan, current_registry(), program.manifest.artifacts)}


def print_method(program: Program, method: str, show_all: bool) -> None:
    """The node and partition tables of one method, then its summary lines."""
    report = program.report(method)
    plan = program.plan(method)
    quantized = any("quantized" in n for n in report["nodes"])
    columns = ("node", "op", "backend", "partition") + (("quantized",) if quantized else ()) + ("why not elsewhere",)
    nodes = Table(*columns)
    listed = report["nodes"] if show_all else [n for n in report["nodes"] if not delegated_plumbing(n)]
    for n in listed:
        why = "; ".join(f"{b}: {r}" for b, r in n["reasons"].items())
        scheme = (_scheme(n),) if quantized else ()
        nodes.add_row(n["name"], n["op"], n["backend"], str(n["partition"]), *scheme, why)
    console.print(nodes)
    if len(listed) < len(report["nodes"]):
        console.print(f"({len(report['nodes']) - len(listed)} quantize/dequantize node(s) not listed: "
                      "the ops' column \"quantized\" says what they compute in; --all lists them)")
    parts = Table("partition", "backend", "nodes", "inputs", "outputs", "boundary bytes", "compile s")
    for p in report["partitions"]:
        timed = "" if p.get("compile_s") is None else f"{p['compile_s']:.2f}"
        parts.add_row(str(p["id"]), p["backend"], str(p["nodes"]), ", ".join(p["inputs"]), ", ".join(p["outputs"]),
                      str(p["boundary_bytes"]), timed)
    console.print(parts)
    print_summary(report)
    print_runs_here(runs_here(plan, current_registry(), program.manifest.artifacts), plan)
    if report.get("quantization"):
        print_quantization(report)
    print_state_writes(plan)
    print_torch_free(portable_steps(program.manifest))


def runs_here(plan: MethodPlan, registry: Registry,
              artifacts: Mapping[str, ArtifactInfo]) -> dict[str, dict[str, Any]]:
    """Each backend of the method's delegate steps: whether it can run on this machine,
    and on what (``runs_on``: "device", "simulator", "reference (CPU)"; None where it
    cannot run), with its reason, as `edgeport backends` reports its availability; and
    the version of it that compiled the steps (``compiled_by``) against the one
    installed here (``installed``, None where it is not), since a toolchain upgrade
    that reads old artifacts differently is otherwise found only by its answers."""
    where: dict[str, dict[str, Any]] = {}
    steps = [s for s in plan.steps if s.kind == "delegate" and s.backend]
    for backend in dict.fromkeys(s.backend for s in steps):
        installed = None
        try:
            entry = registry.entry(backend)
            availability = entry.availability()
            installed = entry.toolchain()
        except UnknownBackendError as exc:
            availability = Availability(can_compile=False, can_run=False, why=str(exc))
        compiled_by = sorted({artifacts[s.artifact].backend_version for s in steps if s.backend == backend})
        where[backend] = {"can_run": availability.can_run,
                          "runs_on": availability.runs_on if availability.can_run else None,
                          "why": availability.why, "compiled_by": ", ".join(compiled_by), "installed": installed}
    return where


def print_runs_here(where: dict[str, dict[str, Any]], plan: MethodPlan) -> None:
    """A line per backend: on its device here, or how it runs instead, or why it cannot
    (and whether ``--reference`` can run its torch reference)."""
    referenced = {s.backend for s in plan.steps if s.kind == "delegate" and s.reference}
    for backend, here in where.items():
        if here["runs_on"] == "device":
            line = "runs here on its device"
        elif here["can_run"]:
            line = f"runs here as its {here['runs_on']}, not on its target hardware"
        else:
            instead = "; --reference runs its torch reference" if backend in referenced else ""
            line = f"cannot run here ({here['why'] or 'its backend says so'}){instead}"
        if here["installed"] is not None and here["installed"] != here["compiled_by"]:
            line += (f"; compiled by {backend} {here['compiled_by']}, this is {here['installed']}: "
                     "re-export if its answers differ")
        console.print(f"{backend}: {escape(line)}", highlight=False)


def state_writes(plan: MethodPlan) -> dict[str, list[str]]:
    """Where each program state the method changes is written: whole by the step that
    computes it, or row by row by the runtime in place (a KV cache)."""
    return {"whole": sorted(plan.state_writes.values()),
            "rows_in_place_by_runtime": [u.state for u in plan.row_updates]}


def print_state_writes(plan: MethodPlan) -> None:
    writes = state_writes(plan)
    if writes["rows_in_place_by_runtime"]:
        console.print(f"state: {len(writes['rows_in_place_by_runtime'])} buffer(s) written row by row in place by the "
                      "runtime (the steps return only the new rows: a KV cache never crosses a delegate boundary "
                      "whole)")
    if writes["whole"]:
        console.print(f"state: {len(writes['whole'])} buffer(s) written whole: {', '.join(writes['whole'])}")


def print_torch_free(portable: list[PortableStep]) -> None:
    """Whether the program runs without torch (every step delegated), and if not, what needs it."""
    if not portable:
        console.print("torch-free: yes (every step is delegated: runs with numpy and the backends' runtimes)")
        return
    console.print(f"torch-free: no ({len(portable)} portable step(s) need torch where the program runs)")
    console.print(describe_steps(portable), markup=False)


def _scheme(node: dict[str, Any]) -> str:
    """"activations uint16 / weights int8 per channel" for a quantized op (spelled out: the
    short "a int8" of an op without weights read as a misspelt article, "an int8");
    "integers" for an op on integer values (a view of token ids: it said "float");
    "float" for any other op (one its backend computes in float between quantized
    neighbours too); "" for a quantize/dequantize node."""
    if node["op"].startswith(QUANTIZATION_OPS):
        return ""
    if node.get("integer"):
        return "integers"
    dtypes = node.get("quantized", {})
    if not dtypes:
        return "float"
    parts = [f"activations {dtypes['activations']}"] if "activations" in dtypes else []
    parts += [f"weights {dtypes['weights']}"] if "weights" in dtypes else []
    return " / ".join(parts)
