"""A kit run as data a vendor publishes: stable JSON (for CI badges) and a static web page.

The JSON is versioned (``schema_version``); a field is only ever added, never renamed
or removed without a new version. docs/conformance.md documents it field by field:

    {"schema": "edgeport-conformance", "schema_version": 1, "edgeport": "0.1.0",
     "backend": {name, version, options, can_compile, can_run, runs_on, why},
     "summary": {cases, passed, taken_whole, declined, not_run, failed},
     "cases":   [{case, family, dtype, verdict, delegated, delegated_ops, declined,
                  error, tolerance, unit, message}],
     "ops":     {op: {"delegated": [case, ...], "declined": {case: reason}}}}

Cases keep the kit's order; ``ops`` is sorted by name. An infinite error (an output of
the wrong dtype or shape) is written as null: JSON has no infinity, and the verdict
and message say what happened.
"""

from __future__ import annotations

import html
import math
from typing import Any

from .kit import KitRun, Outcome, Verdict

SCHEMA = "edgeport-conformance"
SCHEMA_VERSION = 1


def coverage_json(run: KitRun) -> dict[str, Any]:
    """The run as the documented JSON document."""
    from .. import __version__

    availability = run.availability
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "edgeport": __version__,
        "backend": {"name": run.backend, "version": run.version, "options": dict(run.options),
                    "can_compile": availability.can_compile, "can_run": availability.can_run,
                    "runs_on": availability.runs_on, "why": availability.why},
        "summary": {"cases": len(run.outcomes), "passed": run.count(Verdict.PASSED),
                    "taken_whole": sum(o.verdict is Verdict.PASSED and o.delegated == 1.0 for o in run.outcomes),
                    "declined": run.count(Verdict.DECLINED), "not_run": run.count(Verdict.NOT_RUN),
                    "failed": run.count(Verdict.FAILED)},
        "cases": [_case_row(o) for o in run.outcomes],
        "ops": _ops(run.outcomes),
    }


def _case_row(outcome: Outcome) -> dict[str, Any]:
    finite = outcome.error is not None and math.isfinite(outcome.error)
    return {"case": outcome.case, "family": outcome.family, "dtype": outcome.dtype,
            "verdict": outcome.verdict.value, "delegated": round(outcome.delegated, 4),
            "delegated_ops": list(outcome.delegated_ops), "declined": dict(outcome.declined),
            "error": outcome.error if finite else None, "tolerance": outcome.tolerance, "unit": outcome.unit,
            "message": outcome.message}


def _ops(outcomes: tuple[Outcome, ...]) -> dict[str, dict[str, Any]]:
    """The op axis of the table: for each op, the cases that delegated it and the reason
    it was declined in each other case."""
    ops: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        for op in o.delegated_ops:
            ops.setdefault(op, {"delegated": [], "declined": {}})["delegated"].append(o.case)
        for op, reason in o.declined.items():
            ops.setdefault(op, {"delegated": [], "declined": {}})["declined"][o.case] = reason
    return dict(sorted(ops.items()))


_COLORS = {"passed": "#d8f0d2", "declined": "#eeeeee", "not-run": "#fff1c7", "failed": "#f8d0cc"}


def coverage_html(run: KitRun) -> str:
    """One self-contained page (no scripts, no external files): the summary, then a row
    per case coloured by verdict."""
    data = coverage_json(run)
    backend, summary = data["backend"], data["summary"]
    rows = []
    for row, outcome in zip(data["cases"], run.outcomes, strict=True):
        error = "-" if row["error"] is None else f"{row['error']:.2g} / {row['tolerance']:.2g} {row['unit']}"
        cells = (row["case"], row["dtype"], row["verdict"], f"{row['delegated']:.0%}", error, outcome.why)
        rows.append(f'<tr style="background:{_COLORS[row["verdict"]]}">'
                    + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    title = f"edgeport conformance: {backend['name']} {backend['version']}"
    options = ", ".join(f"{k}={v}" for k, v in backend["options"].items()) or "defaults"
    runs = "runs here" if backend["can_run"] else f"cannot run here ({backend['why']}): compile checked only"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>edgeport {html.escape(data['edgeport'])}; options: {html.escape(options)}; {html.escape(runs)}
(runs on: {html.escape(backend['runs_on'])}).</p>
<p>{summary['cases']} cases: {summary['passed']} passed ({summary['taken_whole']} taken whole),
{summary['declined']} declined, {summary['not_run']} not run here, {summary['failed']} failed.</p>
<table><tr><th>case</th><th>dtype</th><th>verdict</th><th>taken</th><th>error / tolerance</th><th>why</th></tr>
{chr(10).join(rows)}
</table></body></html>
"""
