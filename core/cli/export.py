"""``edgeport export``: capture a model, partition it across backends, save a program."""

from __future__ import annotations

import json
import time
from typing import Any, Mapping

import click

from ..api import export as export_program
from ..api import resolve_backends
from ..errors import EdgeportError
from ..backend import Backend
from ..quantize import REQUESTS, CalibrationError, Scheme, load_calibration, resolve_scheme
from ..quantize.calibration import check_calibration_source
from ..quantize.flow import QUANTIZE_LOG, refuse_unoffered
from ..torch_steps import portable_steps
from . import cli, current_registry
from ._output import check_writable, console, progress, said_below
from .explain import print_quantization, print_summary, print_torch_free
from .dims import parse_dynamic
from .spec import load_factory


def parse_options(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """``["cpu.threads=2"]`` -> ``{"cpu": {"threads": "2"}}``; values are typed later by the backend."""
    options: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        backend, dot, name = key.partition(".")
        if not (eq and dot and backend and name):
            raise EdgeportError(f"bad option {item!r}", hint="write --option backend.key=value, e.g. cpu.threads=2")
        given = options.setdefault(backend, {})
        if name in given and given[name] != value:  # which one the user meant, only they know
            raise EdgeportError(f"option {key} is given twice, as {given[name]!r} and {value!r}",
                                hint="give each option once")
        given[name] = value
    return options


@cli.command()
@click.argument("spec")
@click.option("--backend", "-b", "backend_list", default="cpu", show_default=True,
              help="Backends in priority order, comma-separated.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Program file to write.")
@click.option("--strict", is_flag=True,
              help="Fail when a compile fails (by default its nodes go to the next backend or portable).")
@click.option("--option", "option_items", multiple=True, metavar="BACKEND.KEY=VALUE", help="A backend option.")
@click.option("--report", type=click.Path(dir_okay=False), help="Also write the placement report as JSON.")
@click.option("--keep-reference", is_flag=True, default=None,
              help="Keep every delegated partition's torch program (default: only for backends that cannot run here).")
@click.option("--quantize", "scheme", type=click.Choice(sorted(REQUESTS), case_sensitive=False), default=None,
              help="Quantize each node with the scheme of the backend that runs it "
                   "(auto: each backend's own default, e.g. a16w8 on qualcomm, int8 on cpu).")
@click.option("--calibration", metavar="FILE.npz|SPEC", default=None,
              help="Calibration batches for static schemes: a .npz (one array per input, named after "
                   "the forward's parameters, batches stacked on axis 0) or a factory returning an iterable of input tuples.")
@click.option("--group-size", type=int, default=None, help="Weight group size of int4-weight (default 32).")
@click.option("--require-delegated", is_flag=True,
              help="Fail if any step stays portable (torch): the program must run on a device without torch.")
@click.option("--dynamic", "dynamic_items", multiple=True, metavar="INPUT.DIM=MIN:MAX",
              help="A dynamic dim, e.g. x.0=1:64; dims that must be equal together: a.1,b.1=2:128.")
def export(spec: str, backend_list: str, output: str, strict: bool, option_items: tuple[str, ...],
           report: str | None, keep_reference: bool | None, scheme: str | None, calibration: str | None,
           group_size: int | None, require_delegated: bool, dynamic_items: tuple[str, ...]) -> None:
    """Export SPEC (path/to/file.py:factory or package.module:factory) to a program."""
    check_writable(output, report, reads=(spec.partition(":")[0], calibration))
    registry, backends, options = current_registry(), backend_list.split(","), parse_options(option_items)
    selected = resolve_backends(backends, options, registry)  # refuse bad backends and options before any work
    given = [flag for flag, value in (("--calibration", calibration), ("--group-size", group_size)) if value]
    if scheme is None and given:
        raise EdgeportError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} only with --quantize",
                            hint="add --quantize int8 (or another scheme)")
    quantize = resolve_quantize(scheme, group_size, calibration, *selected)
    model, inputs = load_factory(spec)
    dynamic_shapes = parse_dynamic(dynamic_items, model, inputs)
    batches = load_calibration(calibration, model, inputs) if calibration else None
    start = time.perf_counter()
    with progress(True) as show, said_below(QUANTIZE_LOG):
        program = export_program(model, inputs, backends, dynamic_shapes=dynamic_shapes, options=options,
                                 strict=strict, keep_reference=keep_reference or None, registry=registry, progress=show,
                                 quantize=quantize, calibration=batches, require_delegated=require_delegated)
        program.save(output)
    console.print(f"wrote {output} in {time.perf_counter() - start:.2f} s")
    placed = program.report()
    print_summary(placed)
    if "quantization" in placed:
        print_quantization(placed)
    print_torch_free(portable_steps(program.manifest))  # "why did this op fall back?", answered where it happens
    if report:
        with open(report, "w") as f:
            json.dump(program.manifest.report, f, indent=2)


def resolve_quantize(scheme: str | None, group_size: int | None, calibration: str | None,
                     backends: Mapping[str, Backend], options: Mapping[str, Any]) -> Scheme | None:
    """The scheme `--quantize` names for these backends, with every mistake in it and
    its flags refused before the model factory runs (it may take minutes): a scheme no
    selected backend quantizes with, --calibration missing for a static scheme or given
    for one that measures no ranges (it would be read and ignored), a calibration file
    that cannot be read."""
    if scheme is None:
        return None
    quantize = resolve_scheme(scheme, group_size)
    refuse_unoffered(backends, options, quantize)  # first: calibration data would be asked for in vain
    if calibration and not quantize.needs_calibration:
        raise EdgeportError(f"--calibration applies to static schemes; {quantize.name} measures no ranges",
                            hint="drop --calibration, or quantize with int8 or a16w8")
    if quantize.needs_calibration and not calibration:
        raise CalibrationError(f"--quantize {quantize.name} needs --calibration: it measures activation ranges on "
                               "your batches",
                               hint="pass --calibration FILE.npz (one array per input, batches stacked on axis 0) or "
                                    "--calibration path/to/file.py:factory; random data would calibrate ranges real "
                                    "inputs never have, a silent accuracy loss")
    if calibration:
        check_calibration_source(calibration)
    return quantize
