"""One loaded program called from several threads: every answer right, state updated
atomically, loading done once.

Each backend that runs here gets the same check: THREADS threads x CALLS calls on one
shared program, each thread with an input of its own, and every output equal, bit for
bit, to a single-threaded run of the same program (one interpreter with the same inputs
computes the same bits; a call that read another call's buffers does not). A stateful
counter must count every call exactly once and return each count exactly once. A
freshly loaded program whose first call comes from several threads at once must load
once and answer every thread.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import torch
from torch import nn

import edgeport
from edgeport.testing import registry_for

THREADS = 8
CALLS = 200


def backend_named(name: str) -> edgeport.Backend:
    if name == "cpu":
        from edgeport.backends.cpu import CpuBackend

        return CpuBackend()
    if name == "mediatek":
        from edgeport.backends.mediatek import MediatekBackend

        return MediatekBackend()
    pytest.importorskip("onnxruntime_qnn")
    from edgeport.backends.qualcomm import QualcommBackend

    return QualcommBackend()


def registry(name: str) -> edgeport.Registry | None:
    """A registry holding only backend ``name``; skips the test when it cannot run here.
    None for "portable", which needs no backend."""
    if name == "portable":
        return None
    backend = backend_named(name)
    availability = backend.availability()
    if not availability.can_run:
        pytest.skip(f"{name} cannot run here: {availability.why}")
    return registry_for(backend)


def in_threads(work: Callable[[int], Any], threads: int = THREADS) -> list[Any]:
    """Run ``work(i)`` in ``threads`` threads released at the same moment; return each
    thread's result in order, or raise the first exception one of them raised."""
    start = threading.Barrier(threads)
    results: list[Any] = [None] * threads
    errors: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


class SmallNet(nn.Module):
    """Convolutions and a linear layer: one delegated partition with real buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.flatten(1))


class Counter(nn.Module):
    """Program state: every call adds one to ``count`` and returns the new count."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("count", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.count.add_(1)
        return self.count + x * 0


@pytest.fixture(scope="module", params=["cpu", "mediatek", "qualcomm", "portable"])
def shared_program(request: pytest.FixtureRequest) -> tuple[str, edgeport.Program]:
    torch.manual_seed(0)
    name = request.param
    program = edgeport.export(SmallNet().eval(), (torch.randn(1, 3, 16, 16),), [name], registry=registry(name))
    assert [p["backend"] for p in program.report()["partitions"]] == [name]
    return name, program


def test_threads_get_the_single_threaded_answers(shared_program):
    """LiteRT's interpreter is not thread-safe: unguarded, 82-88% of concurrent calls
    raised "There is at least 1 reference to internal data" and some returned another
    call's output."""
    name, program = shared_program
    inputs = [torch.randn(1, 3, 16, 16) for _ in range(THREADS)]
    expected = [program(x) for x in inputs]

    def work(i: int) -> list[torch.Tensor]:
        return [program(inputs[i]) for _ in range(CALLS)]

    for i, outputs in enumerate(in_threads(work)):
        wrong = [k for k, y in enumerate(outputs) if not torch.equal(y, expected[i])]
        assert not wrong, f"{name}: thread {i} got a different answer in calls {wrong[:10]}"


@pytest.fixture(scope="module", params=["cpu", "portable"])
def counter_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A saved counter program: the count update runs on cpu (LiteRT), or as portable torch."""
    name = request.param
    program = edgeport.export(Counter(), (torch.zeros(1),), [name], registry=registry(name))
    assert {p["backend"] for p in program.report()["partitions"]} <= {name}
    path = tmp_path_factory.mktemp("counter") / f"counter_{name}.edgeport"
    program.save(path)
    return name, str(path)


def load_counter(counter_file: tuple[str, str]) -> edgeport.Program:
    name, path = counter_file
    return edgeport.load(path, registry=registry(name))


def test_state_updates_are_atomic_per_call(counter_file):
    """Unguarded, 8x200 calls of the counter lost 182 increments."""
    program = load_counter(counter_file)
    program(torch.zeros(1))  # load before the threads start: only the calls race here
    x = torch.zeros(1)

    def work(_: int) -> list[float]:
        return [program(x).item() for _ in range(CALLS)]

    counts = [c for thread in in_threads(work) for c in thread]
    total = THREADS * CALLS + 1
    assert program.runtime().state["count"].item() == total
    assert sorted(counts) == list(range(2, total + 1)), "a count was returned twice or skipped"


def test_a_concurrent_first_call_loads_once(counter_file):
    """Each thread used to build a Runtime of its own (each with its own state), and
    two portable steps deserialized at once failed: "_CURRENT_DESERIALIZER is already set"."""
    program = load_counter(counter_file)
    x = torch.zeros(1)
    results = in_threads(lambda _: (program(x).item(), program.runtime()))
    assert sorted(count for count, _ in results) == list(range(1, THREADS + 1))
    assert len({id(runtime) for _, runtime in results}) == 1
    assert program.runtime().state["count"].item() == THREADS


def test_programs_loaded_in_several_threads_at_once_all_run(counter_file):
    """torch's deserializer keeps the graph being read in a process-wide variable, so
    two programs whose portable steps are read at the same time used to fail."""
    programs = [load_counter(counter_file) for _ in range(THREADS)]
    counts = in_threads(lambda i: programs[i](torch.zeros(1)).item())
    assert counts == [1.0] * THREADS
