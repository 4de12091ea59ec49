"""Print the zoo's delegated-share table (markdown) for docs/coverage.md and the floors
in test_zoo.py: every family on every backend that compiles here; then the BERT family
with an attention mask on cpu and mediatek (test_zoo_masked.py).

    python tests/zoo/shares.py           # both tables
    python tests/zoo/shares.py masked    # the masked encoders only
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from models import FAMILIES, MASKED_FAMILIES  # noqa: E402
from zoo_export import BACKENDS, export_family  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore")
    compiling = [b for b in BACKENDS if BACKENDS[b].availability().can_compile]
    if sys.argv[1:] != ["masked"]:
        print_table(FAMILIES, compiling)
    print_table(MASKED_FAMILIES, [b for b in ("cpu", "mediatek") if b in compiling])


def print_table(families: dict, names: list[str]) -> None:
    """One row per family: share (partitions), error against eager; then what is left portable."""
    print("| family | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    left = []
    for family in families.values():
        cells = []
        for backend in names:
            exported = export_family(family, backend)
            cell = f"{exported.share:.1%} ({exported.partitions}p)"
            if exported.can_run:
                with torch.no_grad():
                    cell += f", err {exported.error():.0e}"
            cells.append(cell)
            left += [f"{family.name} on {backend}: {op}: {why}" for op, why in exported.declined.items()]
        print(f"| {family.name} | " + " | ".join(cells) + " |", flush=True)
    print("\nLeft portable:")
    print("\n".join(f"- {line}" for line in left))
    print()

if __name__ == "__main__":
    main()
