"""Run the OpInfo sweep and print its counts per backend (and every crash and wrong
answer); the same judgement as test_opinfo.py, on every op or the ones named.

    python tests/opinfo/sweep.py                        # every float32 op, cpu qualcomm mediatek
    python tests/opinfo/sweep.py --backend cpu abs add  # some ops on one backend
    python tests/opinfo/sweep.py --json out.json        # every outcome, for a closer look
    python tests/opinfo/sweep.py --log run.jsonl        # resumable: ops already in the log are not rerun
"""

from __future__ import annotations

import argparse
import collections
import json
import multiprocessing
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, os.path.dirname(__file__))

from opinfo_sweep import OpCase, Outcome, Verdict, float32_opinfos, op_case, op_name, sweep_op  # noqa: E402
from sweep_backends import SWEPT_BACKENDS  # noqa: E402


def sweep_one(index: int, backends: list[str]) -> tuple[str, list[Outcome] | str]:
    """The op at ``index`` of `float32_opinfos` on ``backends``: its outcomes, or why it
    was skipped. Runs in a forked child: a failed torch.export can leave tracing state
    behind that breaks every later export in the process."""
    warnings.filterwarnings("ignore")
    case = op_case(float32_opinfos()[index])
    if not isinstance(case, OpCase):
        return case
    return case.name, [sweep_op(case, SWEPT_BACKENDS[name]) for name in backends]


def tally(name: str, result: list[Outcome] | str, backends: list[str], counts: dict[str, collections.Counter],
          outcomes: list[Outcome], skipped: list[tuple[str, str]]) -> list[str]:
    """Count one op's result (its outcomes on ``backends``, or why it was skipped) and
    say it, a line per outcome."""
    if isinstance(result, str):
        skipped.append((name, result))
        return [f"SKIPPED {name}: {result}"]
    lines = []
    for outcome in (o for o in result if o.backend in backends):
        counts[outcome.backend][outcome.verdict] += 1
        outcomes.append(outcome)
        lines.append(f"{outcome.verdict.value.upper()} {outcome.op} on {outcome.backend}: {outcome.detail}")
    return lines


def read_log(path: str) -> dict[str, list[Outcome] | str]:
    """Each op a `--log` file holds: its outcomes, or why it was skipped. A missing file
    holds none."""
    if not os.path.exists(path):
        return {}
    logged = {}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            logged[entry["op"]] = entry.get("skipped") or [
                Outcome(entry["op"], o["backend"], Verdict(o["verdict"]), o["detail"]) for o in entry["outcomes"]]
    return logged


def append_log(path: str, name: str, result: list[Outcome] | str) -> None:
    entry = {"op": name, "skipped": result} if isinstance(result, str) else {
        "op": name, "outcomes": [dict(backend=o.backend, verdict=o.verdict.value, detail=o.detail) for o in result]}
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help="op names (OpInfo's, e.g. abs or max.reduction_with_dim)")
    parser.add_argument("--backend", action="append", choices=sorted(SWEPT_BACKENDS))
    parser.add_argument("--json", help="write every outcome here")
    parser.add_argument("--reverse", action="store_true", help="last op first (a second process meets the first)")
    parser.add_argument("--after", help="start after this op (resume an interrupted sweep)")
    parser.add_argument("--log", help="append each op's outcomes here as it is judged; ops already in it are "
                        "not rerun, and the counts cover the whole log (resume a long sweep, or run a "
                        "second sweep with --reverse on the same log: they meet in the middle)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every outcome as it comes")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    backends = args.backend or list(SWEPT_BACKENDS)
    infos = float32_opinfos()
    order = [i for i in range(len(infos)) if not args.ops or op_name(infos[i]) in args.ops]
    order = order[::-1] if args.reverse else order
    if args.after:
        order = order[[op_name(infos[i]) for i in order].index(args.after) + 1:]
    logged = read_log(args.log) if args.log else {}
    order = [i for i in order if op_name(infos[i]) not in logged]
    counts = {name: collections.Counter() for name in backends}
    outcomes, skipped, start = [], [], time.time()
    for name, result in logged.items():
        tally(name, result, backends, counts, outcomes, skipped)
    fork = multiprocessing.get_context("fork")
    for index in order:
        if args.log and op_name(infos[index]) in read_log(args.log):  # another sweep on this log judged it
            continue
        with ProcessPoolExecutor(max_workers=1, mp_context=fork) as pool:
            try:
                name, result = pool.submit(sweep_one, index, backends).result()
            except Exception as exc:  # the child died (a native crash, e.g. in a simulator): a crash on each
                name = op_name(infos[index])
                result = [Outcome(name, b, Verdict.CRASH, f"the sweep's child process died: {type(exc).__name__}")
                          for b in backends]
        if args.log:
            append_log(args.log, name, result)
        for line in tally(name, result, backends, counts, outcomes, skipped):
            if args.verbose or not line.startswith(("SKIPPED", "DELEGATED", "DECLINED")):
                print(line, flush=True)
    tried = len({o.op for o in outcomes})
    print(f"\n{tried} ops tried, {len(skipped)} skipped (no tensor sample, not capturable, or random), "
          f"{time.time() - start:.0f} s")
    print("| backend | tried | delegated | declined | crashes | wrong | fp16 range |\n|---|---|---|---|---|---|---|")
    for name, c in counts.items():
        print(f"| {name} | {sum(c.values())} | {c[Verdict.DELEGATED]} | {c[Verdict.DECLINED]} | "
              f"{c[Verdict.CRASH]} | {c[Verdict.WRONG]} | {c[Verdict.FP16_RANGE]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"outcomes": [dict(op=o.op, backend=o.backend, verdict=o.verdict.value, detail=o.detail)
                                    for o in outcomes], "skipped": skipped}, f, indent=1)


if __name__ == "__main__":
    main()
