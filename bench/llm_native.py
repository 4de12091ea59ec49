"""`edgeport llm generate` in Python against `--native` (the native runner): speed and
peak memory, first load (empty cache directory: the weight cache, and the runner, are
built) and later loads, per LLM variant.

    python bench/llm_native.py "/tmp/native-run/smol-{variant}.edgeport" [--tokens 64 --repeat 3 --threads 1]

Each run is the real CLI with ``--json`` in a fresh process; the two ways alternate, so
a change of load on a shared machine hits both alike. A "later" figure is the median
over ``--repeat`` runs. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("fp32", "int8-dynamic", "int4-weight")
PROMPT = "The capital of France is"


def run(path: Path, native: bool, tokens: int, threads: int, cache_dir: str) -> dict:
    command = [sys.executable, "-m", "edgeport.cli", "llm", "generate", str(path), "--prompt", PROMPT,
               "--max-new-tokens", str(tokens), "--threads", str(threads), "--json", *(["--native"] if native else [])]
    out = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                         env={**os.environ, "EDGEPORT_CACHE_DIR": cache_dir})
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pattern", help='LLM programs, e.g. "/tmp/native-run/smol-{variant}.edgeport"')
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; {args.tokens} tokens, {args.threads} thread(s); "
          "MB = MiB")
    print("| variant | runner | ready, first load (s) | peak, first load (MB) | ready, later (s) | "
          "time to first token (ms) | prefill tok/s | decode tok/s | peak, later (MB) | same ids |")
    print("|---" * 10 + "|")
    for variant in VARIANTS:
        path = Path(args.pattern.format(variant=variant))
        if not path.exists():
            continue
        firsts, laters = {}, {False: [], True: []}
        with tempfile.TemporaryDirectory() as python_cache, tempfile.TemporaryDirectory() as native_cache:
            for native, cache in ((False, python_cache), (True, native_cache)):
                firsts[native] = run(path, native, args.tokens, args.threads, cache)
            for _ in range(args.repeat):
                for native, cache in ((False, python_cache), (True, native_cache)):
                    laters[native].append(run(path, native, args.tokens, args.threads, cache))
        same = all(r["token_ids"] == firsts[False]["token_ids"] for runs in laters.values() for r in runs)
        for native in (False, True):
            stats = [r["stats"] for r in laters[native]]

            def median(key: str) -> float:
                return statistics.median(s[key] for s in stats)

            print(f"| {variant} | {'native' if native else 'Python'} | {firsts[native]['stats']['ready_s']:.2f} | "
                  f"{firsts[native]['stats']['peak_rss_mb']:.0f} | {median('ready_s'):.2f} | "
                  f"{median('time_to_first_token_s') * 1e3:.0f} | {median('prefill_tok_s'):.0f} | "
                  f"{median('decode_tok_s'):.1f} | {median('peak_rss_mb'):.0f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
