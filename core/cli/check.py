"""``edgeport check``: each delegated partition against its torch reference, and the
first op of a failing one that diverges."""

from __future__ import annotations

import math
import os

import click
import torch
from click.core import ParameterSource
from rich.markup import escape
from rich.table import Table

from ..api import export as export_program
from ..api import resolve_backends
from ..devtools.check import CheckReport, Divergence, check_program
from ..devtools.rounding import MARGIN_DB, PEAK_FACTOR
from ..devtools.quant_check import (DEFAULT_FLOOR_DB, DEFAULT_THRESHOLD_DB, INPUT_QUANTIZE, OpDrop, QuantizationCheck,
                                    check_quantization, float_program)
from ..errors import InputError
from ..quantize import REQUESTS, load_calibration
from ..program import load
from ..runtime import check_inputs
from . import cli, current_registry
from ._output import FiniteRange, console, print_json, progress
from .export import parse_options, resolve_quantize
from .run import method_plan, random_inputs, read_inputs
from .spec import load_factory


# (parameter, flag) of the options only a SPEC takes: what the check exports it with
SPEC_ONLY = (("backend_list", "--backend"), ("option_items", "--option"), ("scheme", "--quantize"),
             ("calibration", "--calibration"), ("threshold_db", "--threshold-db"), ("floor_db", "--floor-db"))


@cli.command()
@click.argument("target", metavar="SPEC|PROGRAM")
@click.option("--inputs", "inputs_path", type=click.Path(exists=True, dir_okay=False),
              help="Inputs as .npz (default: a SPEC's example inputs, or random ones from a PROGRAM's spec).")
@click.option("--backend", "-b", "backend_list", default="cpu", show_default=True,
              help="For a SPEC: backends in priority order, comma-separated.")
@click.option("--option", "option_items", multiple=True, metavar="BACKEND.KEY=VALUE",
              help="For a SPEC: a backend option.")
@click.option("--method", default=None, help="Method to check (default: forward).")
@click.option("--rtol", type=FiniteRange(min=0), default=None,
              help="Max relative error allowed, for every partition (default: the tolerance each backend declares "
                   "for the options its partition was compiled with, e.g. 1e-4 fp32, 1e-2 fp16).")
@click.option("--no-locate", is_flag=True, help="Do not search a failing partition for its first diverging op.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: {method, partitions: [...], passed}.")
@click.option("--quantize", "scheme", type=click.Choice(sorted(REQUESTS), case_sensitive=False), default=None,
              help="For a SPEC: export it quantized, and also compare each partition with the float model (SQNR).")
@click.option("--calibration", metavar="FILE.npz|SPEC", default=None, help="Calibration batches for --quantize.")
@click.option("--threshold-db", type=FiniteRange(min=0, min_open=True), default=DEFAULT_THRESHOLD_DB, show_default=True,
              help="With --quantize: name the first op whose SQNR against float falls by more than this...")
@click.option("--floor-db", type=FiniteRange(), default=DEFAULT_FLOOR_DB, show_default=True,
              help="...to below this SQNR (a healthy op stays above it; a high value names any large drop).")
@click.pass_context
def check(ctx: click.Context, target: str, inputs_path: str | None, backend_list: str, option_items: tuple[str, ...],
          method: str | None, rtol: float | None, no_locate: bool, as_json: bool, scheme: str | None,
          calibration: str | None, threshold_db: float, floor_db: float) -> None:
    """Check every delegated partition of SPEC (a model, exported here with its torch
    references) or PROGRAM (saved with --keep-reference) against torch, on the same
    inputs. Exits with status 1 if a partition fails."""
    is_program = os.path.isfile(target)
    if not is_program and target.endswith(".edgeport"):
        raise InputError(f"no such program: {target}", hint="give a .edgeport file, or a SPEC path/to/model.py:factory")
    if is_program:
        given = [flag for option, flag in SPEC_ONLY if ctx.get_parameter_source(option) == ParameterSource.COMMANDLINE]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise InputError(f"{', '.join(given)} {verb} to a SPEC, which is exported here; a saved PROGRAM keeps the "
                             "backends, options and quantization it was exported with",
                             hint="check the SPEC with them, or re-export the program with edgeport export")
    if scheme is None:
        for option, flag in (("calibration", "--calibration"), ("threshold_db", "--threshold-db"),
                             ("floor_db", "--floor-db")):
            if ctx.get_parameter_source(option) == ParameterSource.COMMANDLINE:
                raise InputError(f"{flag} applies only with --quantize",
                                 hint="for a SPEC, add --quantize int8 (or another scheme)")
    registry = current_registry()
    with progress(not as_json) as show:
        if is_program:
            program, example = load(target, registry=registry), None
        else:
            backends, options = backend_list.split(","), parse_options(option_items)
            selected = resolve_backends(backends, options, registry)  # refuse bad ones before any work
            quantize = resolve_quantize(scheme, None, calibration, *selected)
            model, example = load_factory(target)
            program = export_program(model, example, backends, options=options, keep_reference=True,
                                     registry=registry, progress=show, quantize=quantize,
                                     calibration=load_calibration(calibration, model, example) if calibration else None)
        name, plan = method_plan(program, method)
        if inputs_path:  # refused as `run` refuses them: a wrong shape failed every partition, in its table
            inputs = check_inputs(plan, [torch.from_numpy(a) for a in read_inputs(inputs_path, plan)])
        else:
            inputs = list(example) if example is not None and name == "forward" else random_inputs(plan)
        report = check_program(program, inputs, method=name, rtol=rtol, locate=not no_locate, registry=registry,
                               progress=show)
        quantized = None
        if not is_program and quantize is not None:
            if show:
                show("comparing with the float model")
            floats = float_program(model, example, backends, options=options, registry=registry)
            quantized = check_quantization(program, floats, inputs, method=name, threshold_db=threshold_db,
                                           floor_db=floor_db, registry=registry)
    if as_json:
        print_json(report.to_json() | ({"quantization": quantized.to_json()} if quantized else {}))
    else:
        print_check(report)
        if quantized:
            print_quantization_check(quantized)
    if not report.passed:
        ctx.exit(1)


def _number(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else str(value)


def _rel(value: float, rtol: float | None) -> str:
    """A relative error as ``.2e``, with the digits it takes not to read as equal to the
    tolerance it is compared with: a failure printed "max rel 1.00e-02" against "rtol 0.01"."""
    digits = 2
    while rtol is not None and math.isfinite(value) and value != rtol and float(format(value, f".{digits}e")) == rtol \
            and digits < 17:
        digits += 1
    return _number(value, f".{digits}e")


def _snr(db: float) -> str:
    return "exact" if db == math.inf else _number(db, ".1f")


NOTHING_DELEGATED = "nothing to check: no partition is delegated (the whole method runs as portable torch)"


def print_check(report: CheckReport) -> None:
    for partition, why in report.fell_back.items():
        console.print(f"[yellow]partition {partition} fell back to portable torch, not checked:[/yellow] "
                      f"{escape(why)}", highlight=False)
    if not report.partitions:
        console.print(NOTHING_DELEGATED)
        return
    quantized = any(p.spread for p in report.partitions)
    table = Table("partition", "backend", "nodes", "max abs", "max rel", "SNR dB", "rtol",
                  *(["max steps", "rounding spread dB"] if quantized else []), "result", title=f"check: {report.method}")
    colors = {"pass": "green", "fail": "red", "error": "red", "skipped": "yellow"}
    for p in report.partitions:
        e = p.error
        if e and p.nan_values:  # compare scores a NaN as an infinite error: an overflow, it reads
            numbers = ["nan", "nan", _snr(e.snr_db)]
        else:
            numbers = [_number(e.max_abs, ".2e"), _rel(e.max_rel, p.rtol), _snr(e.snr_db)] if e else ["-", "-", "-"]
        steps = _number(e.max_steps, ".2f") if e and e.max_steps is not None else "-"
        spread = [steps, _snr(p.spread.snr_db) if p.spread else "-"] if quantized else []
        table.add_row(str(p.partition), p.label, str(p.nodes), *numbers, "-" if p.rtol is None else f"{p.rtol:g}",
                      *spread, f"[{colors[p.status]}]{p.status}[/{colors[p.status]}]")
    console.print(table)
    if quantized:
        console.print("A quantized partition also passes with every output within one step of its quantization "
                      f"(max steps), or within {MARGIN_DB:g} dB of its rounding spread, no value "
                      f"off by more than {PEAK_FACTOR:g}x the spread's largest: the spread is its torch reference "
                      "against itself with the values it rounds nudged by the backend's op error.", highlight=False)
    for p in report.partitions:
        if p.nan_values:
            console.print(f"partition {p.partition} ({p.label}): {p.nan_values} output value(s) are NaN where torch "
                          "computed a number", markup=False, highlight=False)
        differ, discrete = p.discrete_values
        if differ:
            console.print(f"partition {p.partition} ({p.label}): {differ} of its {discrete} integer or bool output "
                          "value(s) differ from torch's (indices, flags)", markup=False, highlight=False)
        d = p.divergence
        if d:
            print_divergence(p.partition, p.label, d, p.rtol)
        elif p.why:
            console.print(f"partition {p.partition} ({p.label}) {p.status}: {p.why}", markup=False)
    skipped = len(report.partitions) - report.checked
    if skipped and not report.checked:
        console.print(f"nothing checked: no partition's backend can run here ({skipped} skipped)")
        return
    passed = sum(1 for p in report.partitions if p.status == "pass")
    console.print(f"{passed}/{report.checked} checked partitions pass" + (f", {skipped} skipped" if skipped else ""))


def print_divergence(partition: int, label: str, d: Divergence, rtol: float | None) -> None:
    """The first diverging op with its source line; or, when the bisection could only
    narrow it to a range, each op of the range with its module and source line."""
    module = f" in module {d.module}" if d.module else ""
    off = f"{d.nan_values} value(s) NaN" if d.nan_values else f"max rel {_rel(d.error.max_rel, rtol)}"
    found = f"{off}, found in {d.compiles} compile{'' if d.compiles == 1 else 's'}"
    if d.exact:
        console.print(f"[red]partition {partition}[/red] ({label}): first diverging op: [bold]{d.node}[/bold] ({d.op})"
                      f"{module}, {found}", highlight=False)
        if d.source:
            console.print(f"    {d.source}" + (f"\n      {d.code}" if d.code else ""), markup=False)
        for drift in d.inputs:  # a drift started before it shows here
            maker = f"{drift.node} ({drift.module})" if drift.module else drift.node
            console.print(f"    its input from {maker}: {drift.off:.0%} of the values a step or more off as the "
                          f"backend computed them, {drift.mean_steps:+.2f} steps on average", markup=False,
                          highlight=False)
        return
    console.print(f"[red]partition {partition}[/red] ({label}): divergence in one of {len(d.candidates)} ops "
                  f"(no shorter prefix compiles alone to tell which), {found}:", highlight=False)
    for c in d.candidates:
        where = (f" in module {c.module}" if c.module else "") + (f": {c.source}" if c.source else "")
        console.print(f"    {c.node}{where}", markup=False, highlight=False)


def print_quantization_check(report: QuantizationCheck) -> None:
    """SQNR per partition, and each partition's first op losing more than the threshold,
    to below the floor."""
    if not report.partitions:
        console.print("no quantized partition to compare with float: none is delegated")
        return
    table = Table("partition", "backend", "SQNR vs fake-quant dB", "SQNR vs float dB", "fake-quant vs float dB",
                  title=f"quantization: {report.method}")
    for p in report.partitions:
        sqnrs = (p.vs_reference_db, p.vs_float_db, p.reference_vs_float_db)
        table.add_row(str(p.partition), p.label or p.backend, *(_db(v) for v in sqnrs))
    console.print(table)
    for p in report.partitions:
        if p.first_drop:
            print_op_drop(p.partition, p.first_drop, report)
        if p.why:
            console.print(f"partition {p.partition} ({p.label or p.backend}) not run: {p.why}", markup=False)


def print_op_drop(partition: int, d: OpDrop, report: QuantizationCheck) -> None:
    """The op (or input) a partition's quantization hurt first, and where the loss shows."""
    named = f"[bold]{d.node}[/bold] ({d.op})" + (f" in module {d.module}" if d.module else "")
    if d.reader:
        where = "" if d.op == INPUT_QUANTIZE else ", at its output's quantize"
        loss = (f"{where}: {d.reader}, which reads it, ends at {_db(d.output_db)} dB (would be {_db_in(d.input_db)} "
                "reading it exact)")
    else:
        loss = f", {_db_in(d.input_db)} in, {_db(d.output_db)} dB out"
    console.print(f"partition {partition}: first op losing more than {report.threshold_db:g} dB, to below "
                  f"{report.floor_db:g} dB: {named}{loss}", highlight=False)
    if d.source:
        console.print(f"    {d.source}", markup=False)
    if d.op == INPUT_QUANTIZE:
        console.print("    the input is quantized to the range calibration measured: calibrate on inputs like these",
                      markup=False)
    elif d.reader:
        console.print("    quantized per tensor, its largest channels or tokens set the range the others round to",
                      markup=False)
    if d.clipped and d.calibrated_range:
        low, high = d.calibrated_range
        console.print(f"    {100 * d.clipped:.3g}% of {d.node}'s output lies beyond the range calibration measured "
                      f"for it ({low:.4g} to {high:.4g}) and is clipped: calibrate on inputs like these", markup=False,
                      highlight=False)


def _db_in(value: float) -> str:
    return "exact" if value == math.inf else f"{_number(value, '.1f')} dB"


def _db(value: float | None) -> str:
    return "-" if value is None else ("exact" if value == math.inf else _number(value, ".1f"))
