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

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..errors import EdgeportError

Progress = Callable[[str], None]


class CalibrationError(EdgeportError):
    """Calibration data is missing, unreadable, or does not fit the model."""


@dataclass
class CalibrationStats:
    """How calibration went: batch count and the time each batch took (observers included)."""

    seconds: list[float] = field(default_factory=list)

    @property
    def batches(self) -> int:
        return len(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        total = sum(self.seconds)
        return {
            "batches": self.batches,
            "seconds": round(total, 4),
            "ms_per_batch": round(1000 * total / self.batches, 2) if self.batches else None,
        }


def as_batch(batch: Any) -> tuple[Any, ...]:
    """One calibration batch as the tuple of positional inputs it stands for."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def calibrate(model: torch.nn.Module, batches: Iterable[Any], progress: Progress | None = None) -> CalibrationStats:
    """Run `model` (with observers) on every batch, timing each."""
    stats = CalibrationStats()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            inputs = tuple(torch.as_tensor(x) if isinstance(x, np.ndarray) else x for x in as_batch(batch))
            start = time.perf_counter()
            try:
                model(*inputs)
            except Exception as exc:
                shapes = ", ".join(str(tuple(x.shape)) if hasattr(x, "shape") else type(x).__name__ for x in inputs)
                raise CalibrationError(
                    f"calibration batch {i} (inputs {shapes}) does not run through the model: "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
                    hint="each batch must be a tuple of inputs shaped like the example inputs",
                ) from exc
            stats.seconds.append(time.perf_counter() - start)
            if progress:
                progress(f"calibrating: batch {i + 1} ({1000 * stats.seconds[-1]:.0f} ms)")
    if not stats.batches:
        raise CalibrationError("the calibration data holds no batches", hint="pass at least one batch of inputs")
    return stats


def load_calibration(source: str) -> Iterable[tuple[Any, ...]]:
    """Batches from a `.npz` file or a SPEC (path/to/file.py:factory, package.module:factory)."""
    if source.endswith(".npz"):
        return list(_npz_batches(source))
    from ..cli.spec import load_object

    factory = load_object(source)
    if not callable(factory):
        raise CalibrationError(f"{source} is not a factory", hint="name a function returning an iterable of batches")
    batches = factory()
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise CalibrationError(
            f"calibration factory {source} returned a {type(batches).__name__}, not an iterable of batches",
            hint="return e.g. [(x1,), (x2,), ...] or a generator of input tuples",
        )
    return batches


def _npz_batches(path: str) -> Iterator[tuple[torch.Tensor, ...]]:
    if not os.path.isfile(path):
        raise CalibrationError(f"no such calibration file: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = [data[name] for name in data.files]
    except Exception as exc:
        raise CalibrationError(f"cannot read calibration file {path}: {exc}") from exc
    if not arrays:
        raise CalibrationError(f"calibration file {path} holds no arrays", hint="save one array per model input")
    counts = {a.shape[0] if a.ndim else 0 for a in arrays}
    if len(counts) != 1 or 0 in counts:
        raise CalibrationError(
            f"calibration file {path}: arrays hold different numbers of batches ({sorted(counts)})",
            hint="stack each input's batches along a new first axis, the same count for every input",
        )
    for i in range(counts.pop()):
        yield tuple(torch.from_numpy(np.ascontiguousarray(a[i])) for a in arrays)
