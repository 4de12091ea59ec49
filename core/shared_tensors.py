"""Tensors that several torch programs of one program hold, stored once.

A program stores a torch program per portable step and per kept reference
(``portable/…``, ``reference/…``), each with the tensors it reads (portable.py).
Methods that run the same weights store them once per method: a Core ML LLM program,
which keeps the torch references of both methods because Core ML cannot run off macOS
(`keep_reference`), held SmolLM2's 513 MiB of fp32 weights twice.

After every method is lowered, bytes that two or more tensor entries store move to one
file, ``tensors/<sha256 of the bytes>.bin``; each entry then names that file as
``"shared"`` instead of a ``"file"`` of its own, and keeps its own dtype and shape.
The manifest lists the shared files (``shared_tensors``): an edgeport from before them
refuses the program at load, naming the field, instead of failing at its first call.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, MutableMapping

FOLDER = "tensors"
# Below this, a shared file's manifest and zip entries (about 250 bytes) cost about what
# sharing saves: norms' scales and biases of one layer stay with their program.
MIN_BYTES = 4096
_TORCH_PROGRAM_FOLDERS = ("portable/", "reference/")


def share_tensors(files: MutableMapping[str, bytes]) -> tuple[str, ...]:
    """Store once, in place, the tensor bytes that ``files``' torch programs store more
    than once; returns the shared files' paths, sorted."""
    indexes = {name.removesuffix("/tensors.json"): json.loads(data) for name, data in files.items()
               if name.endswith("/tensors.json") and name.startswith(_TORCH_PROGRAM_FOLDERS)}
    holders: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # digest -> (prefix, entry) storing those bytes
    for prefix, index in indexes.items():
        for section in index.values():
            for entry in section.values():
                data = files[f"{prefix}/{entry['file']}"]
                if len(data) >= MIN_BYTES:
                    holders.setdefault(hashlib.sha256(data).hexdigest(), []).append((prefix, entry))
    shared, changed = [], set()
    for digest, entries in holders.items():
        if len(entries) < 2:
            continue
        path = f"{FOLDER}/{digest}.bin"
        files[path] = files[f"{entries[0][0]}/{entries[0][1]['file']}"]
        for prefix, entry in entries:
            del files[f"{prefix}/{entry.pop('file')}"]
            entry["shared"] = path
            changed.add(prefix)
        shared.append(path)
    for prefix in changed:  # as portable.program_to_files writes it
        files[f"{prefix}/tensors.json"] = json.dumps(indexes[prefix], sort_keys=True).encode()
    return tuple(sorted(shared))


def is_shared_tensor_path(path: str) -> bool:
    """Whether a ``"shared"`` name may be read: only files of the shared folder, so a
    rewritten index cannot make a tensor of an artifact's or the manifest's bytes."""
    return path.startswith(f"{FOLDER}/") and path.endswith(".bin") and "/" not in path[len(FOLDER) + 1:]
