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
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(__file__))

from opinfo_sweep import OpCase, Verdict, op_cases, sweep_op  # noqa: E402
from sweep_backends import SWEPT_BACKENDS  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ops", nargs="*", help="op names (OpInfo's, e.g. abs or max.reduction_with_dim)")
    parser.add_argument("--backend", action="append", choices=sorted(SWEPT_BACKENDS))
    parser.add_argument("--json", help="write every outcome here")
    parser.add_argument("--reverse", action="store_true", help="last op first (a second process meets the first)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every outcome as it comes")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    backends = [SWEPT_BACKENDS[name] for name in args.backend or SWEPT_BACKENDS]
    counts = {b.name: collections.Counter() for b in backends}
    outcomes, skipped, start = [], [], time.time()
    for case in op_cases(set(args.ops) or None, reverse=args.reverse):
        if not isinstance(case, OpCase):
            skipped.append(case)
            if args.verbose:
                print(f"SKIPPED {case[0]}: {case[1]}", flush=True)
            continue
        for backend in backends:
            outcome = sweep_op(case, backend)
            counts[backend.name][outcome.verdict] += 1
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
