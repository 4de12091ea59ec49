"""A warning at export when a selected backend took none of a method's nodes.

A float64 or float16 model on cpu, say, exported with every node left to portable
torch and nothing said but a "portable 100%" row: the reasons were in `edgeport
explain`, which a newcomer does not know to run. One line per such backend names its
first reason, and, where the model computes in a float dtype other than float32 (what
most backends take), the conversion that gives them float32.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from torch.export import ExportedProgram

log = logging.getLogger("edgeport.export")


def idle_backends(report: Mapping[str, Any], backends: list[str]) -> dict[str, list[dict]]:
    """Per selected backend that took no node, the report rows of the nodes it declined
    that run as portable torch (none when another backend took them)."""
    rows = report.get("nodes", [])
    busy = {row.get("backend") for row in rows}
    declined: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("backend") == "portable":
            for backend, reason in row.get("reasons", {}).items():
                if backend in backends and backend not in busy and reason:
                    declined.setdefault(backend, []).append(row)
    return declined


def float_dtypes(program: ExportedProgram) -> set[torch.dtype]:
    """The floating dtypes of the program's inputs, weights and buffers."""
    values = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"]
    return {v.dtype for v in values if isinstance(v, torch.Tensor) and v.dtype.is_floating_point}


def warn_idle_backends(method: str, program: ExportedProgram, report: Mapping[str, Any], backends: list[str],
                       already_said: set[str] = frozenset()) -> None:
    """Log one warning line per selected backend that took none of the method's nodes,
    except those ``already_said`` (a warning about dynamic dims named them) and those whose
    `prepare()` or `support()` raised (the report's faults: lowering warned of each)."""
    dtypes = float_dtypes(program)
    other = sorted(str(d).removeprefix("torch.") for d in dtypes - {torch.float32})
    hint = (f"; the model computes in {', '.join(other)}: most backends take float32 (model.float() and float32 "
            "inputs)" if other and torch.float32 not in dtypes else "")
    for backend, rows in idle_backends(report, backends).items():
        if backend in already_said or backend in report.get("faults", {}):
            continue
        first = rows[0]
        log.warning("%s: %s took none of the model's nodes: %d it declined run as portable torch; first: %s (%s), "
                    "its reason: %s%s (edgeport explain lists every node's)", method, backend, len(rows),
                    first["name"], first.get("op", ""), first["reasons"][backend], hint)
