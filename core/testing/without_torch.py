"""A case's program run as a device runs it: in a process where torch cannot be imported.

A device has numpy and the backend's runtime, no torch (docs/writing-a-backend.md, "The
run side"). A plugin whose ``load()`` or executable imported torch passed every case of
the kit, run in a process that has torch, and failed on its first board. So the kit
hands each program that is all the backend's steps (the ones it also calls with numpy
arrays) to one process with torch hidden (`torch_free_worker.py`), which loads and runs
the saved file and sends back its outputs; a failure there fails the case, naming the
line that imported torch.

One process serves a whole kit run: it starts on the first case that needs it (a
backend that declines everything, or cannot run here, never starts one), and each case
then costs a save, a load and a run of a small program. A case whose load() or run()
hangs there has its process killed, with whatever it started, when the case's time is
up (`time_limit.py`); the next case starts a new one.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
from typing import Any, Sequence

import numpy as np
import torch

from ..backend import Backend
from ..program import Program
from .roundtrip import RoundTripFailed
from .time_limit import rename_step, step

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_free_worker.py")
EXIT_GRACE = 10.0  # seconds the process gets to exit once the run is over (it exits in milliseconds)


class TorchFreeRuns:
    """The process without torch of one kit run; close it (or use ``with``) when done."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="edgeport-kit-torch-free-", ignore_cleanup_errors=True)
        self._process: subprocess.Popen | None = None
        self._log: Any = None  # the process's stderr, read back when it dies
        self._specs: dict[int, dict[str, Any]] = {}  # id(backend) -> how the process finds it
        self._runs = 0

    def __enter__(self) -> TorchFreeRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def outputs(self, backend: Backend, program: Program, inputs: Sequence[Any]) -> list[torch.Tensor]:
        """``program`` (all ``backend``'s steps) saved, then loaded and called with
        ``inputs`` as numpy arrays where torch cannot be imported: its outputs, flat, as
        tensors. Raises `RoundTripFailed` with the case's verdict line if it failed there."""
        self._runs += 1
        stem = os.path.join(self._folder.name, str(self._runs))
        program.save(stem + ".edgeport")
        np.savez(stem + "-in.npz", *(x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in inputs))
        answer = self._ask({"sys_path": list(sys.path), "backend": self._spec(backend), "program": stem + ".edgeport",
                            "inputs": stem + "-in.npz", "outputs": stem + "-out.npz"})
        if "failed" in answer:
            raise RoundTripFailed(answer["failed"])
        with np.load(stem + "-out.npz") as stored:
            return [torch.from_numpy(stored[f"arr_{i}"]) for i in range(answer["outputs"])]

    def close(self) -> None:
        if self._process is not None:
            self._process.stdin.close()
            try:
                self._process.wait(EXIT_GRACE)
            except subprocess.TimeoutExpired:  # a runtime that hangs at exit must not hang the kit's end
                _kill_group(self._process)
                self._process.wait()
            self._process.stdout.close()
            self._log.close()
            self._process = None
        self._folder.cleanup()

    def _spec(self, backend: Backend) -> dict[str, Any]:
        """How the process finds ``backend``: its name and class (an installed plugin's
        is found through its entry point), and the instance pickled for one registered
        in code."""
        if id(backend) not in self._specs:
            cls = type(backend)
            spec = {"name": backend.name, "cls": f"{cls.__module__}:{cls.__qualname__}", "pickled": None,
                    "unpicklable": ""}
            try:
                spec["pickled"] = base64.b64encode(pickle.dumps(backend)).decode()
            except Exception as exc:  # noqa: BLE001 - a local class, a lock in its state: said if it is needed
                spec["unpicklable"] = (f"the kit cannot hand its backend object to another process "
                                       f"(pickle: {type(exc).__name__}: {exc}): install the plugin, or define "
                                       "its class at the top level of an importable module")
            self._specs[id(backend)] = spec
        return self._specs[id(backend)]

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send ``request`` and read its answer, naming each stage the process reports as
        the case's step (a hung one is killed by the case's time limit, `time_limit.py`);
        a process that died answers that it did (its last stderr line says why), and the
        next request starts a new one."""
        if self._process is None:
            self._log = open(os.path.join(self._folder.name, "worker.log"), "w+b")
            code = f"import runpy; runpy.run_path({WORKER!r}, run_name='__main__')"
            self._process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=self._log, text=True,
                                             start_new_session=True)  # a group of its own, to kill whole
        process = self._process
        with step("starting the process without torch", stop=lambda: _kill_group(process)):
            try:
                process.stdin.write(json.dumps(request) + "\n")
                process.stdin.flush()
                line = process.stdout.readline()
                while line and "stage" in json.loads(line):
                    rename_step(f"{json.loads(line)['stage']} without torch")
                    line = process.stdout.readline()
            except OSError:
                line = ""
        if line:
            return json.loads(line)
        code = self._process.wait()
        self._log.seek(0)
        said = self._log.read().decode(errors="replace").strip().splitlines()
        self._process.stdout.close()
        self._log.close()
        self._process = None
        return {"failed": f"without torch (as on a device), the process running the program ended (exit code "
                          f"{code})" + (f": {said[-1]}" if said else "")}


def _kill_group(process: subprocess.Popen) -> None:
    """End ``process`` (the kit's, in a session of its own) and every process it started."""
    if process.returncode is not None:  # reaped: its pid may be another's now
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended already
        pass
