"""``edgeport run``: run a program on given or random inputs, with latency and profile.

It imports no torch: inputs are numpy arrays, and a program whose steps are all
delegates runs on numpy values even where torch is installed (torch's ~220 MB stays
out of the process); a program with portable steps gets torch tensors where torch is
installed. Outputs of either kind are summarized and written alike."""

from __future__ import annotations

import dataclasses
import math
import statistics
import zipfile
import zlib
from typing import Any

import click
import numpy as np
from rich.table import Table

from ..arrays import NO_NUMPY_TWIN, STORAGE, is_torch_tensor, torch_installed
from ..devtools.html import human_bytes
from ..devtools.profile import Profile, runs_torch, summarize_profile, time_runs
from ..errors import InputError
from ..input_binding import archive_order
from ..manifest import MethodPlan
from ..output_tree import leaves
from ..program import Program, load
from ..torch_steps import portable_steps
from . import cli, current_registry
from ._output import check_writable, console, print_json


def method_plan(program: Program, method: str | None) -> tuple[str, MethodPlan]:
    """The name and plan of ``method`` (default: the program's default method), or an
    InputError listing the methods there are."""
    name = program.default_method if method is None else method
    plan = program.manifest.methods.get(name)
    if plan is None:
        hint = "pick one with --method NAME"
        if "llm" in program.manifest.metadata:  # an LLM program: its text comes from `llm generate`
            hint += "; to generate text: edgeport llm generate PROGRAM --prompt TEXT"
        raise InputError(f"program has no method {name!r}; it has {', '.join(program.methods)}", hint=hint)
    return name, plan


# Random inputs are for trying a program; a program that declares more (a manifest edited
# to say [1, 3, 40000, 40000]) filled 18 GiB of memory before anything ran.
MAX_RANDOM_INPUT_BYTES = 1 << 30


def random_inputs(plan: MethodPlan, seed: int = 0, *, as_torch: bool | None = None) -> list[Any]:
    """Inputs that fit the method's spec; symbolic dims take their lower bound (at least 1).
    numpy arrays, as torch tensors where torch is installed (bfloat16 needs one) unless
    ``as_torch`` says otherwise. An InputError when they would take more than
    `MAX_RANDOM_INPUT_BYTES`."""
    shapes = [[d if isinstance(d, int) else max(1, plan.symbols.get(d, (1, None))[0]) for d in spec.shape]
              for spec in plan.inputs]
    size = sum(math.prod(shape) * STORAGE[spec.dtype].itemsize for shape, spec in zip(shapes, plan.inputs))
    if size > MAX_RANDOM_INPUT_BYTES:
        raise InputError(f"random inputs for method {plan.name!r} would take {human_bytes(size)} "
                         f"({', '.join(f'{s.name}: {s.dtype}{list(shape)}' for s, shape in zip(plan.inputs, shapes))}); "
                         f"random inputs are made up to {human_bytes(MAX_RANDOM_INPUT_BYTES)}",
                         hint="pass the inputs with --inputs FILE.npz")
    generator = np.random.default_rng(seed)
    inputs = []
    for spec, shape in zip(plan.inputs, shapes):
        if spec.dtype in NO_NUMPY_TWIN or np.issubdtype(STORAGE[spec.dtype], np.floating):
            inputs.append(generator.standard_normal(shape, dtype=np.float32))
        elif spec.dtype == "bool":
            inputs.append(generator.integers(0, 2, shape).astype(np.bool_))
        else:  # indices: keep them small so embeddings and gathers stay in range
            inputs.append(generator.integers(0, 8, shape).astype(STORAGE[spec.dtype]))
    return _as_spec(inputs, plan, torch_installed() if as_torch is None else as_torch)


def _as_spec(arrays: list[np.ndarray], plan: MethodPlan, as_torch: bool) -> list[Any]:
    """Random arrays in the dtypes of the method's inputs: a float16/float64 input cast
    from float32; with ``as_torch``, torch tensors (a bfloat16 one too)."""
    if not as_torch:
        return [a.astype(STORAGE[s.dtype], copy=False) for a, s in zip(arrays, plan.inputs)]
    import torch

    return [torch.from_numpy(a).to(getattr(torch, s.dtype)) for a, s in zip(arrays, plan.inputs)]


def read_inputs(path: str, plan: MethodPlan) -> list[np.ndarray]:
    """Inputs from an .npz: by input name, or in order (arr_0, arr_1, ...)."""
    names = [s.name for s in plan.inputs]
    not_npz = InputError(f"{path} is not an .npz archive of arrays",
                         hint=f"save inputs with numpy.savez({_npz_name(path)!r}, " + ", ".join(f"{n}=..." for n in names)
                         + "): arrays named after the inputs, or in order")
    try:  # np.load calls a file that is no numpy format "pickled data", and refuses it
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise not_npz from None
    if not isinstance(data, np.lib.npyio.NpzFile):  # a single .npy array
        raise not_npz
    if _is_torch_save(data):  # a zip too: its entries were listed as arrays the method does not take
        data.close()
        raise InputError(f"{path} is a torch.save file, not a numpy .npz archive",
                         hint=f"save the tensors with numpy.savez({_npz_name(path)!r}, "
                         + ", ".join(f"{n}={n}.numpy()" for n in names) + "): arrays named after the inputs")
    with data:
        keys = archive_order(data.files, names)
        if keys is None:  # named otherwise: taken in order, an array could go to another input
            raise InputError(f"{path} holds arrays {', '.join(sorted(data.files))}; the method's inputs are "
                             f"{', '.join(names)}", hint=not_npz.hint)
        if len(keys) != len(names):
            raise InputError(f"{path} holds {len(data.files)} arrays, the method takes {len(names)}: "
                             f"{', '.join(names)}")
        try:
            return [np.asarray(data[k], order="C") for k in keys]  # ascontiguousarray made a 0-d array 1-d
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise InputError(f"{path}: an array cannot be read ({exc})", hint=not_npz.hint) from None



def _is_torch_save(data: np.lib.npyio.NpzFile) -> bool:
    """Whether the archive is torch.save's zip (a pickle, ``<name>/data.pkl``), not numpy's."""
    return any(name == "data.pkl" or name.endswith("/data.pkl") for name in data.zip.namelist())


def _npz_name(path: str) -> str:
    """``path`` as numpy.savez keeps it: it adds ".npz" to a name without it."""
    return path if path.endswith(".npz") else path.rsplit(".", 1)[0] + ".npz"


def summarize(value: Any) -> Any:
    if is_torch_tensor(value) or isinstance(value, np.ndarray):
        flat = _plain_array(value).astype(np.float32).ravel()
        return {"dtype": str(value.dtype).removeprefix("torch."), "shape": list(value.shape),
                "first": flat[:8].tolist(), "mean": float(flat.mean()) if flat.size else 0.0}
    return value


def _plain_array(value: Any) -> np.ndarray:
    """A torch tensor's or numpy array's values as numpy (bfloat16, which numpy lacks, as float32)."""
    if is_torch_tensor(value):
        value = value.detach().cpu()
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return np.asarray(value)


def describe(summary: Any) -> str:
    """One output's summary as a line of text; nan and inf stay visible."""
    if not isinstance(summary, dict):
        return repr(summary)
    first = ", ".join(format(v, ".6g") for v in summary["first"])
    return f"{summary['dtype']} {summary['shape']}, first {first}, mean {summary['mean']:.6g}"


def write_outputs(path: str, outputs: list[Any]) -> None:
    """Every output, whole, as ``output_0``, ``output_1``, ... of an .npz (bfloat16,
    which numpy lacks, as float32)."""
    with open(path, "wb") as f:  # np.savez given a name would add ".npz" to one without it
        np.savez(f, **{f"output_{i}": _plain_array(value) for i, value in enumerate(outputs)})


@cli.command()
@click.argument("program", type=click.Path(exists=True, dir_okay=False))
@click.option("--inputs", "inputs_path", type=click.Path(exists=True, dir_okay=False), help="Inputs as .npz.")
@click.option("--method", default=None, help="Method to run (default: forward).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(min=1), help="Timed runs.")
@click.option("--warmup", default=0, show_default=True, type=click.IntRange(min=0), help="Untimed runs first.")
@click.option("--profile", is_flag=True, help="Time every step: per step, per backend, boundary bytes, total.")
@click.option("--reference", is_flag=True, help="Run delegates that cannot run here on their torch reference.")
@click.option("--outputs", "outputs_path", type=click.Path(dir_okay=False),
              help="Also write every output, whole, to this .npz (output_0, output_1, ...).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: outputs, latency_ms, steps.")
def run(program: str, inputs_path: str | None, method: str | None, repeat: int, warmup: int, profile: bool,
        reference: bool, outputs_path: str | None, as_json: bool) -> None:
    """Run PROGRAM (random inputs from its spec unless --inputs is given)."""
    check_writable(outputs_path, reads=(program, inputs_path))
    prog: Program = load(program, reference=reference, registry=current_registry())
    name, plan = method_plan(prog, method)
    numpy_only = _runs_on_numpy(prog, plan, reference)
    inputs = read_inputs(inputs_path, plan) if inputs_path else random_inputs(plan, as_torch=not numpy_only)
    runtime = prog.runtime("numpy" if numpy_only else "auto")
    results, latencies = time_runs(runtime, name, inputs, repeat=repeat, warmup=warmup, profile=profile)
    labels = runtime.step_labels(name)
    latency = {"min": min(latencies), "median": statistics.median(latencies), "max": max(latencies)}
    summary = summarize_profile(plan, results, latencies, prog.report(name).get("values", {})) if profile else None
    steps = ([dataclasses.asdict(s) for s in summary.steps] if summary
             else [{"index": i, "label": l} for i, l in enumerate(labels)])
    flat = leaves(results[-1].outputs)
    if outputs_path:
        write_outputs(outputs_path, flat)
    outputs = [summarize(o) for o in flat]
    if as_json:
        data = {"outputs": outputs, "latency_ms": latency, "steps": steps, "reference": reference,
                "outputs_file": outputs_path}
        if summary:
            data["profile"] = {k: v for k, v in summary.to_json().items() if k != "steps"}
        print_json(data)
        return
    not_on_target = sorted({label for label in labels if ": " in label})
    if not_on_target:
        console.print(f"[yellow]not on the target hardware[/yellow]: {', '.join(not_on_target)}")
    for i, out in enumerate(outputs):
        console.print(f"output {i}: {describe(out)}", markup=False)
    if outputs_path:
        console.print(f"wrote {len(flat)} output(s) to {outputs_path}", markup=False)
    console.print(f"latency over {repeat} run(s): min {latency['min']:.3f} ms, median {latency['median']:.3f} ms, "
                  f"max {latency['max']:.3f} ms")
    console.print(f"steps: {', '.join(labels) or 'none'}")
    if summary:
        print_profile(summary)


def _runs_on_numpy(program: Program, plan: MethodPlan, reference: bool) -> bool:
    """Whether this run can keep torch (~220 MB) out of the process where it is
    installed: every step a delegate (no portable step, no torch reference) and no
    bfloat16 input (numpy has none)."""
    return (not reference and not portable_steps(program.manifest)
            and not any(spec.dtype in NO_NUMPY_TWIN for spec in plan.inputs))


def print_profile(profile: Profile) -> None:
    """Per step, per backend, then the totals: what the time and the boundary bytes add up to."""
    which = (f"the median of {profile.runs} run(s)" if profile.runs % 2 else
             f"the faster of the two middle runs of {profile.runs}")
    table = Table("step", "partition", "ran on", "ms", "share", "bytes in", "bytes out", title=f"profile: {which}")
    for s in profile.steps:
        crossing = not runs_torch(s)
        table.add_row(str(s.index), str(s.partition), s.label, f"{s.ms:.3f}", f"{100 * s.share:.1f}%",
                      human_bytes(s.bytes_in) if crossing else "-", human_bytes(s.bytes_out) if crossing else "-")
    console.print(table)
    backends = Table("backend (ran on)", "steps", "ms", "share")
    for b in sorted(profile.backends, key=lambda b: -b.ms):
        backends.add_row(b.label, str(b.steps), f"{b.ms:.3f}", f"{100 * b.share:.1f}%")
    backends.add_row("runtime overhead", "", f"{profile.overhead_ms:.3f}",
                     f"{100 * profile.overhead_ms / profile.wall_ms if profile.wall_ms else 0:.1f}%")
    backends.add_row("[bold]total (wall)[/bold]", str(len(profile.steps)), f"[bold]{profile.wall_ms:.3f}[/bold]",
                     "100%")
    console.print(backends)
    console.print(f"torch (portable steps and torch references): {100 * profile.portable_share:.1f}% of the time; "
                  f"{human_bytes(profile.boundary_bytes)} cross delegate boundaries per call "
                  "(their conversions are timed inside each delegate step)")
    elsewhere = sorted({b.label for b in profile.backends if ": " in b.label})
    if elsewhere:
        console.print(f"[yellow]not on the target hardware[/yellow]: {', '.join(elsewhere)}: these times say nothing "
                      "about the device")