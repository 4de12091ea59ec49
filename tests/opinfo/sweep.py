"""Run the OpInfo sweep and print its counts per backend (and every crash and wrong
answer); the same judgement as test_opinfo.py, on every op or the ones named.

    python tests/opinfo/sweep.py                        # every float32 op, cpu qualcomm mediatek
    python tests/opinfo/sweep.py --backend cpu abs add  # some ops on one backend
    python tests/opinfo/sweep.py --json out.json        # every outcome, for a closer look
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help="op names (OpInfo's, e.g. abs or max.reduction_with_dim)")
    parser.add_argument("--backend", action="append", choices=sorted(SWEPT_BACKENDS))
    parser.add_argument("--json", help="write every outcome here")
    parser.add_argument("--reverse", action="store_true", help="last op first (a second process meets the first)")
    parser.add_argument("--after", help="start after this op (resume an interrupted sweep)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every outcome as it comes")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    backends = args.backend or list(SWEPT_BACKENDS)
    infos = float32_opinfos()
    order = [i for i in range(len(infos)) if not args.ops or op_name(infos[i]) in args.ops]
    order = order[::-1] if args.reverse else order
    if args.after:
        order = order[[op_name(infos[i]) for i in order].index(args.after) + 1:]
    counts = {name: collections.Counter() for name in backends}
    outcomes, skipped, start = [], [], time.time()
    fork = multiprocessing.get_context("fork")
    for index in order:
        with ProcessPoolExecutor(max_workers=1, mp_context=fork) as pool:
            try:
                name, result = pool.submit(sweep_one, index, backends).result()
            except Exception as exc:  # the child died (a native crash): every backend's verdict is unknown
                name, result = op_name(infos[index]), f"the sweep's child process died: {type(exc).__name__}"
        if isinstance(result, str):
            skipped.append((name, result))
            if args.verbose:
                print(f"SKIPPED {name}: {result}", flush=True)
            continue
        for outcome in result:
            counts[outcome.backend][outcome.verdict] += 1
            outcomes.append(outcome)
            if args.verbose or outcome.verdict in (Verdict.CRASH, Verdict.WRONG):
                print(f"{outcome.verdict.value.upper()} {outcome.op} on {outcome.backend}: {outcome.detail}", flush=True)
    tried = len({o.op for o in outcomes})
    print(f"\n{tried} ops tried, {len(skipped)} skipped (no tensor sample, not capturable, or random), "
          f"{time.time() - start:.0f} s")
    print("| backend | tried | delegated | declined | crashes | wrong |\n|---|---|---|---|---|---|")
    for name, c in counts.items():
        print(f"| {name} | {sum(c.values())} | {c[Verdict.DELEGATED]} | {c[Verdict.DECLINED]} | "
              f"{c[Verdict.CRASH]} | {c[Verdict.WRONG]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"outcomes": [dict(op=o.op, backend=o.backend, verdict=o.verdict.value, detail=o.detail)
                                    for o in outcomes], "skipped": skipped}, f, indent=1)


if __name__ == "__main__":
    main()
