"""Print the zoo's delegated-share table (markdown) for docs/coverage.md and the floors
in test_zoo.py: every family on every backend that compiles here.

    python tests/zoo/shares.py
"""

from __future__ import annotations

import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from models import FAMILIES  # noqa: E402
from zoo_export import BACKENDS, export_family  # noqa: E402


def main() -> None:
    warnings.filterwarnings("ignore")
    names = [b for b in BACKENDS if BACKENDS[b].availability().can_compile]
    print("| family | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    left = []
    for family in FAMILIES.values():
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


if __name__ == "__main__":
    main()
