"""The Python API: ``edgeport.export``, ``edgeport.export_methods``, ``edgeport.prepare_qat``.

    prog = edgeport.export(model, (x,), backends=["qualcomm", "cpu"])
    prog.save("model.edgeport")
    prog = edgeport.load("model.edgeport")
    y = prog(x)

    prog = edgeport.export(model, (x,), ["cpu"], quantize="int8", calibration=batches)
"""

from __future__ import annotations

import dataclasses
import platform
import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram

from edgeport.partitioners.policy import PORTABLE

from .backend import Backend, options_from_dict, validate_options
from .contract import checked_version
from .capture import capture, warn_if_training
from .dynamic import infer_view_sizes, warn_dynamic_declines
from .idle_backends import warn_idle_backends
from .empty_operands import drop_empty_cat_operands
from .errors import BackendError, EdgeportError, InputError, UnknownBackendError
from .fold import fold_constants
from .shared_state import read_state_as_state
from .index_views import slice_run_indexes, view_spread_indexes
from .permute_rank import collapse_cats, collapse_expands, collapse_permutes
from .lowering import LoweringSettings, Progress, lower_method
from .manifest import Manifest
from .plugins import BackendEntry, Registry, registry_or_default
from .program import Program, file_info
from .quantize import CalibrationError, Scheme, is_qat_model, prepare_qat_model, quantize_method, resolve_scheme
from .quantize.flow import lowered_report, refuse_unoffered
from .quantize.placement import compile_options
from .report import quantized_counts, runs_fake_quantized
from .shared_artifacts import share_artifacts
from .shared_tensors import share_tensors
from .sized_constants import fold_sized_constants
from .tensors import tensor_to_bytes
from .torch_steps import method_portable_steps, not_delegated

Method = tuple  # (module, example_inputs) or (module, example_inputs, dynamic_shapes)


def export(
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    backends: Sequence[str] = ("cpu",),
    *,
    dynamic_shapes: Any = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    strict: bool = False,
    keep_reference: bool | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    quantize: str | Scheme | None = None,
    calibration: Iterable[Any] | None = None,
    require_delegated: bool = False,
) -> Program:
    """Export ``model`` as a program whose ``forward`` runs on ``backends`` in priority
    order; what none of them takes runs as portable torch (``require_delegated=True``
    refuses that instead: a `LoweringError` naming the steps, so the program runs
    without torch).

    ``options`` maps a backend name to its options (e.g. ``{"cpu": {"threads": 2}}``).
    ``strict`` raises on a failed compile instead of falling back. ``keep_reference``
    stores each delegated partition's torch program too; the default (None) keeps it
    only for backends that cannot run on this machine, so such programs stay runnable
    here with ``reference=True``.

    ``quantize`` names a scheme ("int8", "int8-dynamic", "int4-weight", "a16w8",
    "palettize4", "palettize6"; see `edgeport.quantize.SCHEMES`), or "auto" for each
    backend's own default scheme (`Backend.default_scheme`: a16w8 on qualcomm, int8 on
    cpu): each node is quantized by the backend that runs it.
    Static schemes need ``calibration``, an iterable of input tuples. A model returned
    by `prepare_qat` is exported with the scheme it was prepared for.
    """
    return export_methods(
        {"forward": (model, example_inputs, dynamic_shapes)},
        backends,
        options=options,
        strict=strict,
        keep_reference=keep_reference,
        registry=registry,
        progress=progress,
        quantize=quantize,
        calibration=calibration,
        require_delegated=require_delegated,
    )


def export_methods(
    methods: Mapping[str, Method],
    backends: Sequence[str] = ("cpu",),
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    strict: bool = False,
    keep_reference: bool | None = None,
    registry: Registry | None = None,
    progress: Progress | None = None,
    quantize: str | Scheme | None = None,
    calibration: Iterable[Any] | Mapping[str, Iterable[Any]] | None = None,
    rewrite: Callable[[str, ExportedProgram], ExportedProgram] | None = None,
    require_delegated: bool = False,
) -> Program:
    """Export several named methods (e.g. ``prefill`` and ``decode``) into one program.

    Each value is ``(module, example_inputs[, dynamic_shapes])``. Buffers the methods
    mutate become program state, shared between methods by their name in the module
    (so two wrappers of one model share its KV cache). ``quantize`` applies to every
    method; ``calibration`` is one iterable of batches, or a mapping of method name to
    its batches. A backend that can merge its partitions of all methods into one
    artifact does (weights stored once); list the method called most often first: it
    becomes the merged artifact's entry 0.

    ``rewrite(name, program)``, when given, transforms each method's captured (and, if
    asked, quantized) program before it is partitioned (``edgeport.llm`` captures one
    decoder layer and repeats it N times there).

    ``require_delegated`` fails the export, as soon as a method leaves a portable step,
    with a `LoweringError` naming each one: a program for a device without torch.
    """
    _check_methods(methods)
    _check_calibration_methods(calibration, methods)
    scheme = resolve_scheme(quantize) if quantize is not None else None
    registry = registry_or_default(registry)
    selected, parsed = resolve_backends(backends, options, registry)
    if scheme is not None:
        refuse_unoffered(selected, parsed, scheme)  # before any capture
    if keep_reference is None:
        keep = lambda name: not selected[name].availability().can_run  # noqa: E731
    else:
        keep = lambda name: keep_reference  # noqa: E731
    captured: dict[str, _Captured] = {}
    for name, spec in methods.items():
        module, inputs, dynamic = (tuple(spec) + (None,))[:3]
        if progress:
            progress(f"{name}: capturing with torch.export")
        warn_if_training(module)  # not in capture: prepare_qat captures a model meant to train
        declined: dict[str, str] = {}
        quantized = None
        if scheme is not None or is_qat_model(module):
            batches = calibration.get(name) if isinstance(calibration, Mapping) else calibration
            quantized = quantize_method(module, inputs, dynamic, selected, parsed, scheme, batches, progress)
            program, declined = quantized.program, quantized.placement.declined
            lowering_options = compile_options(quantized.placement, parsed)
        else:
            program = capture(module, inputs, list(selected.values()), parsed, dynamic)
            lowering_options = parsed
        if rewrite is not None:
            program = rewrite(name, program)
        captured[name] = _Captured(program, quantized, lowering_options, declined)
    read_state_as_state([c.program for c in captured.values()])  # before folding: none of it is a weight
    files: dict[str, bytes] = {}
    artifacts, plans, reports, state = {}, {}, {}, {}
    for name, (program, quantized, lowering_options, declined) in captured.items():
        infer_view_sizes(program)  # a view of a dynamic size reads no sym_size
        collapse_permutes(program)  # a rank-6 permute (Swin's windows) at rank 4, for NPUs' rank caps
        collapse_expands(program)  # ... and a rank-5 expand (grouped-query attention's repeated heads)
        collapse_cats(program)  # ... and a rank-5 cat (GPT-J's rotary: a stack of every two dims)
        drop_empty_cat_operands(program)  # Phi-3's zero-size pass-through half of a fully rotated head
        view_spread_indexes(program)  # transformers' mask[arange(b)[:, None, None, None], arange(s)]: a view
        slice_run_indexes(program)  # Falcon's fused_qkv[..., [-2]]: a slice
        folding = fold_constants(program)  # what depends only on weights and literals
        program = folding.program
        sized = fold_sized_constants(program)  # ... and on dynamic sizes: stored at the largest
        program = sized.program
        folding = dataclasses.replace(folding, program=program, folded={**folding.folded, **sized.folded})
        settings = LoweringSettings(strict=strict, keep_reference=keep, progress=progress, declined=declined)
        lowered = lower_method(name, program, selected, lowering_options, settings)
        if require_delegated and (portable := method_portable_steps(name, lowered.plan, lowered.report)):
            raise not_delegated(portable)
        if quantized is not None:  # what each backend quantized, as its artifacts run it
            lowered.report["quantization"] = lowered_report(quantized, quantized_counts(lowered.report),
                                                            runs_fake_quantized(lowered.report))
        if folding.folded:
            lowered.report["folded"] = folding.folded
        said = warn_dynamic_declines(name, program, lowered.report, list(selected))
        warn_idle_backends(name, program, lowered.report, list(selected), already_said=said)
        files.update(lowered.files)
        artifacts.update(lowered.artifacts)
        plans[name] = lowered.plan
        reports[name] = lowered.report
        written = [*lowered.plan.state_writes.values(), *(u.state for u in lowered.plan.row_updates)]
        for fqn in written:
            if fqn not in state:
                state[fqn] = _store_state(files, fqn, program.state_dict.get(fqn, program.constants.get(fqn)))
    share_artifacts(selected, files, artifacts, plans)
    shared = share_tensors(files)
    manifest = Manifest(
        producer={"name": "edgeport", "version": _version(), "torch": torch.__version__, "python": platform.python_version()},
        methods=plans,
        artifacts=artifacts,
        state=state,
        files={path: file_info(data) for path, data in files.items()},
        report=reports,
        shared_tensors=shared,
    )
    return Program(manifest, files, registry=registry)


class _Captured(NamedTuple):
    """One method as captured (and, if asked, quantized and rewritten), before lowering."""

    program: ExportedProgram
    quantized: Any  # the quantization's outcome (`quantize_method`), or None
    options: Mapping[str, Any]  # each backend's options to lower it with
    declined: dict[str, str]  # backend -> why it declines every node (its scheme)


# A method's name becomes part of its artifacts' paths in the file (artifacts/<method>/...)
_METHOD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_methods(methods: Mapping[str, Any]) -> None:
    """Refuse, before any capture, a method table `export_methods` cannot export, or
    whose names would write a file `load` refuses (``"a/../b"``)."""
    if not isinstance(methods, Mapping) or not methods:
        raise InputError("export_methods takes a non-empty dict of method name -> (module, example_inputs"
                         "[, dynamic_shapes])", hint='e.g. {"forward": (model, (x,))}')
    for name, spec in methods.items():
        if not isinstance(name, str) or not _METHOD_NAME.fullmatch(name) or ".." in name:
            raise InputError(f"method name {name!r} is not one a program can hold",
                             hint="use letters, digits, '_', '.' and '-', e.g. 'forward' or 'decode'")
        if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 3 or not callable(spec[0]):
            raise InputError(f"method {name!r} must be (module, example_inputs[, dynamic_shapes]), "
                             f"got {type(spec).__name__}")


def _check_calibration_methods(calibration: Any, methods: Mapping[str, Any]) -> None:
    """Refuse a calibration mapping with a key that names no method: a mapping is read as
    method name -> batches, so ``calibration={"x": batches}`` (keyed by input name) found
    no batches for "forward" and was refused as "int8 needs calibration data", though
    data had been given."""
    if not isinstance(calibration, Mapping):
        return
    strangers = [key for key in calibration if key not in methods]
    if strangers:
        raise CalibrationError(
            f"calibration is a mapping, read as method name -> batches, but {', '.join(map(repr, strangers))} "
            f"names no method of this program (its methods: {', '.join(map(repr, methods))})",
            hint="for one method pass its batches as a list of input tuples, e.g. calibration=[(x1,), (x2,)]; "
                 "for several, key them by method name",
        )


def resolve_backends(
    backends: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None = None, registry: Registry | None = None
) -> tuple[dict[str, Backend], dict[str, Any]]:
    """The selected backends by name, and each one's options, checked against what it
    declares: everything `export` refuses before any work, callable before a costly
    model is even built (the CLI does)."""
    registry = registry_or_default(registry)
    selected = _select_backends(registry, backends)
    return selected, _parse_options(selected, options or {}, registry)


def prepare_qat(
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    backends: Sequence[str] = ("cpu",),
    quantize: str | Scheme = "int8",
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    registry: Registry | None = None,
) -> torch.fx.GraphModule:
    """The model with fake quantization, placed for ``backends`` as `export` would place
    it, to fine-tune (quantization-aware training). Train it like any module, then pass
    it to `export` with the same backends; no calibration data is needed.

    The model is put in eval mode and captured so: batch norms after convolutions are
    folded into them (statistics frozen) while the weights and quantization ranges train.
    """
    selected, parsed = resolve_backends(backends, options, registry)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    return prepare_qat_model(model.eval(), example_inputs, selected, parsed, quantize)


def backend_names(names: str | Sequence[str]) -> list[str]:
    """The backends a caller names, as "coreml,cpu" or ["coreml", "cpu"], spaces stripped."""
    if isinstance(names, str):
        names = names.split(",")
    if not isinstance(names, Sequence) or not all(isinstance(n, str) for n in names):
        raise BackendError(f"backends are named by strings, e.g. ['cpu'] or 'coreml,cpu'; got {names!r}")
    stripped = [n.strip() for n in names]
    if any(stripped) and not all(stripped):  # "cpu,,qualcomm": a name left out, not an empty list
        raise BackendError(f"an empty backend name in {','.join(names)!r}",
                           hint="name the backends separated by single commas, e.g. --backend qualcomm,cpu")
    return [n for n in stripped if n]


def _select_backends(registry: Registry, names: Sequence[str]) -> dict[str, Backend]:
    names = backend_names(names)
    if not names:
        raise BackendError(
            "no backend selected",
            hint=f"name at least one, e.g. --backend cpu (backends=['cpu']); '{PORTABLE}' alone delegates nothing",
        )
    selected: dict[str, Backend] = {}
    for name in names:
        if name == PORTABLE:  # "portable" is always the fallback; naming it selects nothing
            continue
        entry = registry.entry(name)
        if entry.backend.name in selected:  # "cpu,cpu", or a backend by name and by alias
            raise BackendError(f"backend {entry.backend.name!r} is named twice ({', '.join(names)})",
                               hint="name each backend once, in the order they are to be asked")
        availability = entry.availability()
        if not availability.can_compile:
            raise BackendError(f"backend {entry.backend.name!r} cannot compile on this machine: {availability.why}",
                               hint=_install_hint(entry))
        checked_version(entry.backend)  # recorded with every artifact: refused before any work
        selected[entry.backend.name] = entry.backend
    return selected


def _install_hint(entry: BackendEntry) -> str:
    """What to install for a backend that cannot compile: edgeport's extra of the same name
    for a built-in one; a plugin's own distribution has no such extra in edgeport."""
    if entry.distribution == "edgeport":
        return f"install its toolchain (pip install 'edgeport[{entry.backend.name}]') or choose another backend"
    return (f"install what {entry.distribution}, the distribution of backend {entry.backend.name!r}, needs to "
            "compile (see its documentation), or choose another backend")


def _parse_options(selected: Mapping[str, Backend], options: Mapping[str, Mapping[str, Any]],
                   registry: Registry) -> dict[str, Any]:
    if not isinstance(options, Mapping) or not all(isinstance(o, Mapping) for o in options.values()):
        raise BackendError(f"options are a dict of backend name -> dict of option values, got {options!r}",
                           hint='e.g. options={"cpu": {"threads": 2}}')
    options = _keyed_by_name(options, registry)
    unknown = sorted(set(options) - set(selected))
    if unknown:
        raise BackendError(
            f"options given for backend(s) not selected: {', '.join(unknown)}",
            hint=f"selected backends: {', '.join(selected) or 'none'}",
        )
    return {name: validate_options(b, options_from_dict(b, dict(options.get(name, {})), "--option"))
            for name, b in selected.items()}


def _keyed_by_name(options: Mapping[str, Mapping[str, Any]], registry: Registry) -> dict[str, dict[str, Any]]:
    """``options`` keyed by backend name where the user keyed them by an alias (``--backend
    npu`` takes one, so ``--option npu.soc=X`` must too); a key that names no backend stays
    as it is, to be refused as not selected."""
    keyed: dict[str, dict[str, Any]] = {}
    for key, values in options.items():
        try:
            name = registry.entry(key).backend.name
        except UnknownBackendError:
            name = key
        keyed.setdefault(name, {}).update(values)
    return keyed


def _store_state(files: dict[str, bytes], fqn: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, torch.Tensor):
        raise EdgeportError(f"mutated buffer {fqn!r} has no initial tensor value")
    data, description = tensor_to_bytes(value)
    if not np.frombuffer(data, np.uint8).any():  # a KV cache: described, not stored (`arrays.initial_state`)
        return {**description, "fill": 0}
    path = f"state/{fqn}.bin"
    files[path] = data
    return {"file": path, **description}


def _version() -> str:
    from . import __version__

    return __version__
