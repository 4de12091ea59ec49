"""Calibration data: where it comes from, and running it through the observed model.

Static schemes measure each activation's range on the user's batches. There is no
default: random inputs would calibrate ranges no real input has, a silent accuracy
bug, so a static scheme without calibration data refuses to export.

A batch is a tuple of inputs like the example inputs (a lone tensor is a 1-tuple).
From the CLI, `--calibration` names a `.npz` file (one array per model input, each a
stack of batches along a new first axis) or a SPEC whose factory returns an iterable
of batches.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..errors import EdgeportError, a_type
from ..input_binding import archive_order

Progress = Callable[[str], None]


class CalibrationError(EdgeportError):
    """Calibration data is missing, unreadable, or does not fit the model."""


@dataclass
class CalibrationStats:
    """How calibration went: batch count and the time each batch took (observers included)."""

    seconds: list[float] = field(default_factory=list)
    # floating input position -> (lowest, highest) value over every batch: an input that
    # held one value throughout (`constant_inputs`) measured no range to quantize with
    ranges: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def batches(self) -> int:
        return len(self.seconds)

    @property
    def constant_inputs(self) -> dict[int, float]:
        """Each floating input that held a single value in every batch, and that value.
        Quantized from such a calibration, a real input clips to the constant's range
        (an all-zeros batch: to one step, every output wrong, 0.3 dB against float on a
        conv residual block), and nothing else would say so."""
        return {position: low for position, (low, high) in self.ranges.items() if low == high}

    def observe_inputs(self, inputs: tuple[Any, ...]) -> None:
        for position, x in enumerate(inputs):
            if isinstance(x, torch.Tensor) and x.is_floating_point() and x.numel():
                low, high = float(x.min()), float(x.max())
                seen = self.ranges.get(position, (low, high))
                self.ranges[position] = (min(seen[0], low), max(seen[1], high))

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.seconds)
        constant = {str(position): value for position, value in self.constant_inputs.items()}
        return {
            "batches": self.batches,
            "seconds": round(total, 4),
            "ms_per_batch": round(1000 * total / self.batches, 2) if self.batches else None,
            **({"constant_inputs": constant} if constant else {}),
        }


def as_batch(batch: Any) -> tuple[Any, ...]:
    """One calibration batch as the tuple of positional inputs it stands for."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def check_batches_given(calibration: Any) -> None:
    """Refuse, before any work, calibration that is no iterable of batches: a number
    raised TypeError, and a path given from Python was iterated character by character."""
    if isinstance(calibration, (str, bytes, os.PathLike)):
        raise CalibrationError(f"calibration={calibration!r:.80} is a path: from Python, calibration takes batches",
                               hint="pass e.g. [(x1,), (x2,), ...]; the CLI's --calibration reads a FILE.npz")
    if not isinstance(calibration, Iterable):
        raise CalibrationError(f"calibration takes an iterable of batches; got {type(calibration).__name__} {calibration!r:.60}",
                               hint="pass e.g. [(x1,), (x2,), ...] or a generator of input tuples")


def calibrate(model: torch.nn.Module, batches: Iterable[Any], progress: Progress | None = None,
              examples: tuple[Any, ...] | None = None) -> CalibrationStats:
    """Run `model` (with observers) on every batch, timing each. `examples`: the
    model's example inputs, to name a batch that fails for its shapes (a batch axis
    left out) rather than show torch's guard ("Guard failed: x.size()[0] == 4").

    An observer of a constant (a weight) sees the same tensor in every batch, so it
    observes the first batch only (`_constants_observed_once`): its range is the same,
    and an LLM's decode, calibrated token by token, no longer rescans every weight
    (SmolLM2's 135M) per token."""
    stats = CalibrationStats()
    with torch.no_grad(), _constants_observed_once(model) as observed_once:
        for i, batch in enumerate(_read(batches)):
            inputs = tuple(torch.as_tensor(x) if isinstance(x, np.ndarray) else x for x in as_batch(batch))
            _check_finite(i, inputs)
            stats.observe_inputs(inputs)
            start = time.perf_counter()
            try:
                model(*inputs)
            except Exception as exc:
                _refuse_shapes(i, inputs, examples)
                shapes = ", ".join(str(tuple(x.shape)) if hasattr(x, "shape") else type(x).__name__ for x in inputs)
                raise CalibrationError(
                    f"calibration batch {i} (inputs {shapes}) does not run through the model: "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                    hint="each batch must be a tuple of inputs shaped like the example inputs",
                ) from exc
            stats.seconds.append(time.perf_counter() - start)
            if i == 0:
                observed_once()
            if progress:
                progress(f"calibrating: batch {i + 1} ({1000 * stats.seconds[-1]:.0f} ms)")
    if not stats.batches:
        raise CalibrationError("the calibration data holds no batches", hint="pass at least one batch of inputs")
    _check_ranges(model)
    return stats


def _read(batches: Iterable[Any]) -> Iterator[Any]:
    """`batches`, one at a time, with a failure of the iterable itself (a data loader or a
    generator raising) said as the data's: it was "internal error: RuntimeError: loader
    broke ... please report it", as if edgeport had failed."""
    iterator = iter(batches)
    index = 0
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise CalibrationError(f"the calibration data raised reading batch {index}: "
                                   f"{type(exc).__name__}: {message}",
                                   hint="fix the data loader or generator that yields the batches (run it alone: "
                                        "list(batches))") from exc
        yield batch
        index += 1


BATCH_HINT = ("each entry of the calibration data is one whole batch, a tuple of inputs shaped like the example "
              "inputs; an .npz stacks them on a new first axis: numpy.savez(f, x=numpy.stack(batches))")


def _refuse_shapes(index: int, inputs: tuple[Any, ...], examples: tuple[Any, ...] | None) -> None:
    """Name the first input of a failing batch whose shape or dtype is not its example's.
    Only for a batch that failed: with dynamic dims, other shapes are allowed. A float64
    batch (numpy's default) for a float32 model said only torch's "expected scalar type
    Double but found Float", naming neither the input nor the fix."""
    if examples is None:
        return
    if len(inputs) != len(examples):
        raise CalibrationError(f"calibration batch {index} holds {len(inputs)} input(s), the model's example "
                               f"{len(examples)}", hint=BATCH_HINT)
    for position, (x, example) in enumerate(zip(inputs, examples)):
        shape, wanted = tuple(getattr(x, "shape", ())), tuple(getattr(example, "shape", ()))
        if shape != wanted:
            missing = ": one batch per entry, with its batch axis" if shape == wanted[1:] else ""
            raise CalibrationError(f"calibration batch {index} input {position} has shape {shape}, the model's "
                                   f"example {wanted}{missing}", hint=BATCH_HINT)
    for position, (x, example) in enumerate(zip(inputs, examples)):
        dtype, wanted_dtype = getattr(x, "dtype", None), getattr(example, "dtype", None)
        if dtype is not None and wanted_dtype is not None and dtype != wanted_dtype:
            raise CalibrationError(f"calibration batch {index} input {position} is {dtype}, the model's example "
                                   f"{wanted_dtype}",
                                   hint=f"convert the batches to the example's dtype, e.g. x.to({wanted_dtype})"
                                        + (" (numpy makes float64 by default: x.astype(numpy.float32))"
                                           if dtype == torch.float64 else ""))


# Beyond this magnitude an activation holds a sentinel, not data: a mask written as
# torch.finfo(torch.float32).min (-3.4e38) ranges every real value of it into one step
# as surely as -inf does.
SENTINEL = 1e30


def _check_ranges(model: torch.nn.Module) -> None:
    """Refuse a range calibration measured over infinity, NaN or a sentinel. Quantized,
    every real value of that tensor rounds to one step, in the fake-quantized reference
    and on the device alike, and the export would succeed with garbage (qualcomm int8
    on a Llama block whose additive attention mask holds -inf: cosine 0.36 to float).
    The usual cause is an attention mask; edgeport llm masks with -100 for this reason."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return
    from torchao.quantization.pt2e import ObserverBase

    for node in graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        observer = model.get_submodule(node.target)
        low, high = getattr(observer, "min_val", None), getattr(observer, "max_val", None)
        if not (isinstance(observer, ObserverBase) and isinstance(low, torch.Tensor) and low.numel()):
            continue
        # an observer that saw nothing keeps +inf / -inf: no range was measured
        if bool((low <= -SENTINEL).any() or (high >= SENTINEL).any() or low.isnan().any() or high.isnan().any()):
            value = node.args[0]
            if value.op == "get_attr":
                _refuse_stored(model, value, float(low.min()), float(high.max()))
            _refuse_range(value, float(low.min()), float(high.max()))


ROUNDS_TO_ONE_STEP = "quantized, every real value of it would round to one step"


def _refuse_range(value: torch.fx.Node, low: float, high: float) -> None:
    """An activation (an op's output, an input): the usual cause is an attention mask."""
    from ..report import op_name, source_of  # the report module imports this package

    op = op_name(value) if value.op == "call_function" else value.op
    where = source_of(value)
    raise CalibrationError(
        f"calibration measured the range of {value.name} ({op}) as {low:.3g} to {high:.3g}: {ROUNDS_TO_ONE_STEP}"
        + (f" ({where})" if where else ""),
        hint="keep infinities and sentinels out of quantized values: write an attention mask with a finite value "
             "such as -100 instead of -inf or torch.finfo(dtype).min, or quantize with a backend that keeps that "
             "op float",
    )


def _refuse_stored(model: torch.nn.Module, value: torch.fx.Node, low: float, high: float) -> None:
    """A tensor the model stores holds NaN, infinity or a sentinel: no calibration data
    measured that, the model holds it. A parameter is a broken weight (a diverged
    training run, a bad checkpoint); a buffer may be a mask written with -inf."""
    from ..report import source_of  # the report module imports this package

    readers = [r for observer in value.users for r in observer.users if source_of(r)]
    where = f" (read by {readers[0].name}: {source_of(readers[0])})" if readers else ""
    holds = "NaN" if math.isnan(low) or math.isnan(high) else \
        "infinity" if math.isinf(low) or math.isinf(high) else f"a value beyond ±{SENTINEL:.0e}"
    weight = value.target in dict(model.named_parameters())
    kind = "weight" if weight else "buffer" if value.target in dict(model.named_buffers()) else "constant"
    raise CalibrationError(
        f"the model's {kind} {value.target} holds {holds} (it ranges "
        f"{low:.3g} to {high:.3g}): {ROUNDS_TO_ONE_STEP}{where}",
        hint="load or train weights that are finite: check the checkpoint (torch.isfinite(p).all() for each "
             "parameter)" if weight else
             "store finite values: write a mask with a finite value such as -100 instead of -inf or "
             "torch.finfo(dtype).min",
    )


def _check_finite(index: int, inputs: tuple[Any, ...]) -> None:
    """Refuse a batch holding NaN or infinity: an observer's range would become NaN
    (torchao's observers then fail an assert) or infinite (every other value one step)."""
    for position, x in enumerate(inputs):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise CalibrationError(f"calibration batch {index}, input {position} holds NaN or infinity",
                                   hint="calibrate on the values the model will see: drop or clean that batch")


@contextlib.contextmanager
def _constants_observed_once(model: torch.nn.Module) -> Iterator[Callable[[], None]]:
    """Yield a function that makes every observer of a constant pass its input through
    unobserved, for the rest of the block (then they observe again).

    A constant is a `get_attr` of the prepared graph that no op of the graph writes (a
    weight; not a buffer the model mutates, such as a KV cache). Only observers are
    skipped, whose output is their input: a fake quantizer changes its output."""
    observers = constant_observers(model)

    def skip() -> None:
        for observer in observers:
            observer.forward = _unobserved

    try:
        yield skip
    finally:
        for observer in observers:
            vars(observer).pop("forward", None)


def constant_observers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The observer modules of a prepared graph whose input is a constant (see above)."""
    graph = getattr(model, "graph", None)
    if not isinstance(graph, torch.fx.Graph):
        return []
    from torchao.quantization.pt2e import ObserverBase

    written = {arg.target for node in graph.nodes if _writes(node) for arg in node.args[:1]
               if isinstance(arg, torch.fx.Node) and arg.op == "get_attr"}
    found = {}
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        (source,) = node.args
        if not (isinstance(source, torch.fx.Node) and source.op == "get_attr" and source.target not in written):
            continue
        module = model.get_submodule(node.target)
        if isinstance(module, ObserverBase):
            found[node.target] = module
    return list(found.values())


def _writes(node: torch.fx.Node) -> bool:
    """Whether ``node`` writes into its first argument (``copy_``, ``index_copy_``, ...)."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    target = node.target
    return node.op == "call_function" and isinstance(target, torch._ops.OpOverload) and target._schema.is_mutable


def _unobserved(x: Any) -> Any:
    return x


def check_calibration_source(source: str) -> None:
    """Refuse a `--calibration` that cannot be read, before the model factory runs (it
    may take minutes): a missing file, a .npz that is no numpy archive, another kind
    of file."""
    if source.endswith(".npz"):
        _check_npz(source)
        return
    location, colon, _ = source.rpartition(":")
    if not colon:
        raise CalibrationError(f"--calibration {source}: give a FILE.npz or a SPEC (path/to/file.py:factory)",
                               hint="save the batches with numpy.savez('cal.npz', x=batches): one array per input")
    if location.endswith(".py") and not os.path.isfile(location):
        raise CalibrationError(f"no such calibration file: {location}")


def _check_npz(path: str) -> None:
    if not os.path.isfile(path):
        raise CalibrationError(f"no such calibration file: {path}")
    if not zipfile.is_zipfile(path):  # numpy would try it as a pickle, and suggest allow_pickle
        raise CalibrationError(f"calibration file {path} is not a numpy .npz of arrays (it is no zip archive)",
                               hint=f"save the batches with numpy.savez({path!r}, x=batches): one array per input")


def load_calibration(source: str, model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> Iterable[tuple[Any, ...]]:
    """Batches from a `.npz` file or a SPEC (path/to/file.py:factory, package.module:factory)
    for ``model``: an .npz's arrays are bound to its forward's parameters by name."""
    check_calibration_source(source)
    if source.endswith(".npz"):
        names = _input_names(model, len(example_inputs))
        batches = list(_npz_batches(source, names))
        _check_dtypes(source, names, batches[0], example_inputs)
        return batches
    from ..cli.spec import load_object

    factory = load_object(source)
    if not callable(factory):
        raise CalibrationError(f"{source} is not a factory", hint="name a function returning an iterable of batches")
    try:
        batches = factory()
    except Exception as exc:
        raise CalibrationError(f"calibration factory {source} raised {type(exc).__name__}: {exc}",
                               hint="fix the factory; rerun with --debug for the traceback") from exc
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise CalibrationError(
            f"calibration factory {source} returned {a_type(batches)}, not an iterable of batches",
            hint="return e.g. [(x1,), (x2,), ...] or a generator of input tuples",
        )
    return batches


def _input_names(model: torch.nn.Module, count: int) -> list[str]:
    """The names of the first ``count`` positional parameters of ``model.forward``
    (``input_0``, ... where it takes ``*args``)."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    try:
        names = [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind in kinds]
    except (TypeError, ValueError):  # no signature to read
        names = []
    return names[:count] if len(names) >= count else [f"input_{i}" for i in range(count)]


def _check_dtypes(path: str, names: Sequence[str], batch: tuple[torch.Tensor, ...], examples: tuple[Any, ...]) -> None:
    """Refuse arrays of another dtype than the example inputs' (numpy saves float64 by
    default): the error from inside the model named no file and no fix."""
    for name, value, example in zip(names, batch, examples):
        if isinstance(example, torch.Tensor) and value.dtype != example.dtype:
            wanted = str(example.dtype).removeprefix("torch.")
            raise CalibrationError(f"calibration file {path}: array {name} is {str(value.dtype).removeprefix('torch.')}, "
                                   f"the model's input is {wanted}", hint=f"convert it with .astype(numpy.{wanted})")


def _npz_batches(path: str, input_names: Sequence[str]) -> Iterator[tuple[torch.Tensor, ...]]:
    """The batches of an .npz whose arrays are named after the inputs or positional
    (``numpy.savez(path, a, b)``), as `edgeport run --inputs` takes them. Arrays named
    otherwise are refused: taken in the file's order, ``savez(y=..., x=...)`` calibrated
    x on y's values, silently."""
    hint = f"save one array per input: numpy.savez({path!r}, " + ", ".join(f"{n}=..." for n in input_names) + ")"
    try:
        with np.load(path, allow_pickle=False) as data:
            order = archive_order(data.files, input_names)
            if order is None:
                raise CalibrationError(f"calibration file {path} holds arrays {', '.join(sorted(data.files))}; the "
                                       f"model's inputs are {', '.join(input_names)}", hint=hint)
            arrays = [data[name] for name in order]
    except CalibrationError:
        raise
    except Exception as exc:  # numpy's word for an object array suggests allow_pickle, which would run code
        why = "it holds Python objects, not numeric arrays" if "pickle" in str(exc) else str(exc)
        raise CalibrationError(f"cannot read calibration file {path}: {why}", hint=hint) from exc
    if not arrays:
        raise CalibrationError(f"calibration file {path} holds no arrays", hint=hint)
    counts = {a.shape[0] if a.ndim else 0 for a in arrays}
    if counts == {0}:
        raise CalibrationError(f"calibration file {path} holds no batches (its arrays have no rows)", hint=hint)
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(
            f"calibration file {path}: arrays hold different numbers of batches ({sorted(counts)})",
            hint="stack each input's batches along a new first axis, the same count for every input",
        )
    for i in range(counts.pop()):
        yield tuple(torch.from_numpy(np.ascontiguousarray(a[i])) for a in arrays)

