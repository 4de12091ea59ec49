"""Where a cpu program call spends the time a bare LiteRT interpreter does not (issue 14).

    python bench/call_path.py --program mnv2_int8_1thread.edgeport [--runs 500]

The program must hold one cpu step and have been exported for 1 thread
(``options={"cpu": {"threads": 1}}``, e.g. by ``quantize.py --clock cpu``), so that all
its work runs on the calling thread and that thread's CPU time measures it.

It prints, from one process:
1. three ways of calling the same interpreter, alternated in blocks of 5 (median / p10 /
   min of the calling thread's CPU time), each split into the time inside ``invoke`` and
   outside it: the bare interpreter (set_tensor of a numpy array, invoke, get_tensor),
   the step's executable (``TfliteExecutable.run``) and the program call;
2. what the same torch call (``x.numpy()``) costs right after an invoke and right after
   0.04, 0.6 and ~4.6 ms of busy work that touches almost no memory, first and second
   time: on a loaded machine the first call after a few ms runs on caches that other
   processes emptied, whatever the few ms did.

Reads the runtime's private fields to reach the step's executable: a measurement, not API.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import edgeport

CLOCK = time.thread_time_ns


def summary(samples_ns: list[int], unit_ns: float = 1e6, digits: int = 3) -> str:
    """median / p10 / min of ``samples_ns`` in units of ``unit_ns`` (ms by default)."""
    v = sorted(s / unit_ns for s in samples_ns)
    return f"{statistics.median(v):.{digits}f} / {statistics.quantiles(v, n=10)[0]:.{digits}f} / {v[0]:.{digits}f}"


def call_layers(program: edgeport.Program, x: torch.Tensor, runs: int) -> None:
    """Part 1: bare interpreter, executable, program; total and outside-invoke CPU time."""
    runtime = program.runtime()
    _, steps, _ = runtime._methods[program.default_method]
    if len(steps) != 1 or not hasattr(steps[0].executable, "interpreter"):
        raise SystemExit("the program must be one cpu (LiteRT) step")
    executable = steps[0].executable
    interpreter = executable.interpreter
    source, target = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    invoke, inside = interpreter.invoke, [0]

    def timed_invoke() -> None:
        start = CLOCK()
        invoke()
        inside[0] = CLOCK() - start

    executable._invoke = timed_invoke
    array = x.numpy().copy()
    calls = {
        "bare interpreter": lambda: (interpreter.set_tensor(source, array), timed_invoke(), interpreter.get_tensor(target)),
        "TfliteExecutable.run": lambda: executable.run([x]),
        "program(x)": lambda: program(x),
    }
    total: dict[str, list[int]] = {name: [] for name in calls}
    outside: dict[str, list[int]] = {name: [] for name in calls}
    for _ in range(runs // 5):
        for name, call in calls.items():
            call()
            for _ in range(5):
                start = CLOCK()
                call()
                spent = CLOCK() - start
                total[name].append(spent)
                outside[name].append(spent - inside[0])
    print("1 thread, CPU ms of the calling thread (median / p10 / min)")
    for name in calls:
        print(f"  {name:22s} call {summary(total[name])}   outside invoke {summary(outside[name])}")


def cold_calls(program: edgeport.Program, x: torch.Tensor, runs: int) -> None:
    """Part 2: one torch call's cost after an invoke and after busy work of growing length."""
    interpreter = program.runtime()._methods[program.default_method][1][0].executable.interpreter
    busy = {f"{n:>6} additions": (lambda n=n: sum(range(n))) for n in (1_000, 30_000, 300_000)}
    before = {"invoke": interpreter.invoke, **busy}
    for name, work in before.items():
        start = CLOCK()
        work()
        print(f"  ({name}: {(CLOCK() - start) / 1e3:.0f} us)")
    first: dict[str, list[int]] = {name: [] for name in before}
    second: dict[str, list[int]] = {name: [] for name in before}
    for _ in range(runs):
        for name, work in before.items():
            work()
            t0 = CLOCK()
            x.numpy()
            t1 = CLOCK()
            x.numpy()
            first[name].append(t1 - t0)
            second[name].append(CLOCK() - t1)
    print("x.numpy() right after ..., CPU µs (median / p10 / min), first call then second")
    for name in before:
        print(f"  {name:18s} first {summary(first[name], 1e3, 1)}   second {summary(second[name], 1e3, 1)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--program", required=True, help="a 1-thread cpu .edgeport with one input")
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()
    program = edgeport.load(args.program)
    shape = [int(d) for d in program.manifest.methods[program.default_method].inputs[0].shape]
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    program(x)
    call_layers(program, x, args.runs)
    cold_calls(program, x, args.runs // 2)


if __name__ == "__main__":
    main()
