"""Three ways to make one loaded TFLite model safe to call from several threads.

    python bench/threads.py [--rounds 3] [--models tiny,mobilenet_v2] [--threads 2]

A LiteRT interpreter is not thread-safe: two threads setting inputs or invoking at once
raise "There is at least 1 reference to internal data in the interpreter" or, worse,
read another call's output. The candidates, all around the same model bytes:

- lock: one interpreter, one call at a time;
- per-thread: one interpreter per calling thread (threading.local), never shared;
- pool: interpreters handed out to one call at a time, made on demand up to a bound
  (8: one per calling thread at most; or cores / XNNPACK threads per interpreter, so
  the pool never oversubscribes the CPU), a call waiting when all are busy.

For each model it measures, in one process: the median single-thread latency of each
(against the unguarded interpreter, the overhead of the guard), the throughput of 8
threads x N calls (N >= 40 and >= 1 s of single-threaded work; every output checked
against a single-threaded run), and the resident memory each interpreter adds (XNNPACK packs its
own copy of the weights per interpreter). Then the same for what ships: the whole
`Program` call. Rounds alternate the strategies, so a change in machine load hits them
all; the table gives medians over rounds. Interpreters use --threads XNNPACK threads
each (the cpu backend's default is every core).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

import edgeport
from edgeport.backends.tflite.runner import _interpreter_class

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
from example_models import load_example  # noqa: E402

THREADS_CALLING = 8


class Tiny(torch.nn.Module):
    """A model whose call is nearly all overhead: where a guard's cost shows most."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


def exported(name: str, threads: int) -> tuple[edgeport.Program, bytes, torch.Tensor]:
    """The cpu backend's program for a model, its .tflite, and one example input."""
    if name == "tiny":
        model, inputs = Tiny().eval(), (torch.randn(1, 8),)
    else:
        model, inputs = load_example(name)
    program = edgeport.export(model, inputs, ["cpu"], options={"cpu": {"threads": threads}})
    (data,) = [v for k, v in program.files.items() if k.endswith(".tflite")]
    return program, data, inputs[0]


class Interp:
    """One raw LiteRT interpreter, with the minimum a call needs."""

    def __init__(self, model: bytes, threads: int) -> None:
        self.interpreter = _interpreter_class()(model_content=model, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


class Unguarded:
    def __init__(self, make: Callable[[], Interp]) -> None:
        self.interp = make()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.interp(x)


class Locked:
    def __init__(self, make: Callable[[], Interp]) -> None:
        self.interp = make()
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.interp(x)


class PerThread:
    def __init__(self, make: Callable[[], Interp]) -> None:
        self.make = make
        self.local = threading.local()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        interp = getattr(self.local, "interp", None)
        if interp is None:
            interp = self.local.interp = self.make()
        return interp(x)


class Pool:
    """At most `size` interpreters, made on demand; a call waits for a free one.
    The most recently returned one is handed out first (its buffers are warm)."""

    def __init__(self, make: Callable[[], Interp], size: int) -> None:
        self.make = make
        self.free: list[Interp] = []
        self.made = 0
        self.size = size
        self.changed = threading.Condition()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        interp = self.take()
        try:
            return interp(x)
        finally:
            with self.changed:
                self.free.append(interp)
                self.changed.notify()

    def take(self) -> Interp:
        with self.changed:
            while not self.free and self.made >= self.size:
                self.changed.wait()
            if self.free:
                return self.free.pop()
            self.made += 1
        return self.make()


def strategies(bound: int) -> dict[str, Callable[[Callable[[], Interp]], Callable[[np.ndarray], np.ndarray]]]:
    return {
        "unguarded": Unguarded,
        "lock": Locked,
        "per-thread": PerThread,
        f"pool of {THREADS_CALLING}": lambda make: Pool(make, THREADS_CALLING),
        f"pool of {bound} (cores / XNNPACK threads)": lambda make: Pool(make, bound),
    }


def latency_ms(call: Callable[[np.ndarray], Any], x: np.ndarray, runs: int) -> float:
    for _ in range(5):
        call(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def threaded(call: Callable[[np.ndarray], Any], inputs: list[np.ndarray], expected: list[np.ndarray],
             calls: int) -> tuple[float, int, int]:
    """(calls per second, wrong outputs, errors) for THREADS_CALLING threads x `calls`."""
    wrong = errors = 0
    lock = threading.Lock()
    start = threading.Barrier(THREADS_CALLING + 1)

    def work(i: int) -> None:
        nonlocal wrong, errors
        start.wait()
        for _ in range(calls):
            try:
                ok = np.array_equal(call(inputs[i]), expected[i])
            except Exception:  # noqa: BLE001 - counted, that is the point
                with lock:
                    errors += 1
                continue
            if not ok:
                with lock:
                    wrong += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(THREADS_CALLING)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return THREADS_CALLING * calls / (time.perf_counter() - t0), wrong, errors


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def interpreter_mb(make: Callable[[], Interp], x: np.ndarray, count: int = 4) -> float:
    """Resident memory one more interpreter adds, after its first invoke (packed weights)."""
    keep = [make()]
    keep[0](x)
    before = rss_mb()
    for _ in range(count):
        keep.append(make())
        keep[-1](x)
    return (rss_mb() - before) / count


@dataclass
class Figures:
    """One strategy's measurements, one entry per round."""

    latency_ms: list[float] = field(default_factory=list)
    calls_per_s: list[float] = field(default_factory=list)
    wrong: int = 0
    errors: int = 0
    interpreters: int = 0


def bench_model(name: str, rounds: int, threads: int) -> None:
    program, model, example = exported(name, threads)
    make = lambda: Interp(model, threads)  # noqa: E731
    inputs = [np.ascontiguousarray(torch.randn_like(example).numpy()) for _ in range(THREADS_CALLING)]
    reference = make()
    expected = [reference(x).copy() for x in inputs]
    runs = 2000 if name == "tiny" else 100
    calls = max(40, round(1.0 / latency_ms(reference, inputs[0], runs) * 1e3 / THREADS_CALLING))  # >= ~1 s of work
    print(f"\n{name}: {len(model) / 2**20:.1f} MB model, {threads} XNNPACK thread(s) per interpreter, "
          f"{THREADS_CALLING} threads x {calls} calls, median of {rounds} rounds")
    print(f"  memory per extra interpreter: {interpreter_mb(make, inputs[0]):.1f} MB")
    bound = max(1, len(os.sched_getaffinity(0)) // threads)
    candidates = strategies(bound)
    figures = {label: Figures() for label in [*candidates, "edgeport.Program (whole call)"]}
    for _ in range(rounds):  # strategies alternate, so a change of load hits them all
        for label, strategy in candidates.items():
            made = [0]

            def counted() -> Interp:
                made[0] += 1
                return make()

            record(figures[label], lambda x, s=strategy(make): s(x), strategy(counted), inputs, expected, calls, runs)
            figures[label].interpreters = max(figures[label].interpreters, made[0])
        # What ships: the program itself, whose runtime holds a lock per loaded step.
        call = lambda x: program(torch.from_numpy(x)).numpy()  # noqa: E731
        record(figures["edgeport.Program (whole call)"], call, call, inputs, expected, calls, runs)
        figures["edgeport.Program (whole call)"].interpreters = 1
    print("| strategy | 1-thread median ms | 8 threads: calls/s | wrong | errors | interpreters |")
    print("|---|---|---|---|---|---|")
    for label, f in figures.items():
        print(f"| {label} | {statistics.median(f.latency_ms):.4f} | {statistics.median(f.calls_per_s):.0f} "
              f"| {f.wrong} | {f.errors} | {f.interpreters} |")


def record(into: Figures, alone: Callable[[np.ndarray], Any], shared: Callable[[np.ndarray], Any],
           inputs: list[np.ndarray], expected: list[np.ndarray], calls: int, runs: int) -> None:
    into.latency_ms.append(latency_ms(alone, inputs[0], runs))
    per_s, wrong, errors = threaded(lambda x: np.array(shared(x)), inputs, expected, calls)
    into.calls_per_s.append(per_s)
    into.wrong += wrong
    into.errors += errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every strategy, alternating")
    parser.add_argument("--models", default="tiny,mobilenet_v2")
    parser.add_argument("--threads", type=int, default=2, help="XNNPACK threads per interpreter")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f}, cores: {len(os.sched_getaffinity(0))}")
    for name in args.models.split(","):
        bench_model(name, args.rounds, args.threads)
    print(f"\nload average after: {os.getloadavg()[0]:.1f}, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
