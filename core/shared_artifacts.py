"""Methods that share an artifact: one file for the partitions of several methods.

Two methods of one program often run the same weights: an LLM's ``prefill`` and
``decode`` differ only in how many tokens they take. Compiled apart, each artifact
carries every weight, so the program file and its loaded memory hold them twice. After
all methods are lowered, each backend that can (`Backend.merge`) is handed all of its
artifacts at once and may return one artifact holding them all; each step then names
that artifact and its ``entry`` in it, and the runtime loads it once.

Entries keep the order of the methods, so the first method's partition is entry 0
(a backend may run entry 0 faster: the cpu backend lets its inputs live in place).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, MutableMapping

from .backend import Artifact, Backend, options_from_dict
from .contract import artifact_problem
from .errors import BackendError, described
from .manifest import ArtifactInfo, MethodPlan


def share_artifacts(
    backends: Mapping[str, Backend],
    files: MutableMapping[str, bytes],
    artifacts: MutableMapping[str, ArtifactInfo],
    plans: MutableMapping[str, MethodPlan],
) -> list[str]:
    """Merge each backend's artifacts where it can (in place); returns the merged paths."""
    by_backend: dict[str, list[str]] = {}
    methods_of: dict[str, set[str]] = {}  # backend -> the methods its artifacts serve
    for method, plan in plans.items():
        for step in plan.steps:
            if step.kind == "delegate" and step.artifact not in by_backend.setdefault(step.backend, []):
                by_backend[step.backend].append(step.artifact)
                methods_of.setdefault(step.backend, set()).add(method)
    merged_paths = []
    for name, paths in by_backend.items():
        infos = [artifacts[p] for p in paths]
        # Partitions of one method share no weights (each node is in one partition), and
        # an entry other than 0 may run slower: only artifacts of several methods merge.
        if len(methods_of[name]) < 2 or any(i.options != infos[0].options for i in infos):
            continue
        backend = backends[name]
        options = options_from_dict(backend, infos[0].options)
        try:
            merged = backend.merge([Artifact(files[p], "." + p.rsplit(".", 1)[-1], dict(i.metadata), options)
                                    for p, i in zip(paths, infos)])
        except Exception as exc:  # the plugin's bug, named as such: it was edgeport's "internal error"
            raise BackendError(f"backend {name!r}: merge() raised {described(exc)}",
                               hint="a bug in the backend (merge returns an Artifact or None, never raises): "
                                    f"report it to its authors, or export without {name}") from exc
        if merged is None:
            continue
        problem = artifact_problem(merged)
        if problem:
            raise BackendError(f"backend {name!r}: merge() {problem}",
                               hint="a bug in the backend: report it to its authors")
        path = f"artifacts/{name}{merged.suffix}"
        for p in paths:
            del files[p], artifacts[p]
        files[path] = merged.data
        artifacts[path] = ArtifactInfo(name, infos[0].backend_version, infos[0].options, dict(merged.metadata))
        entry_of = {p: i for i, p in enumerate(paths)}
        for method, plan in plans.items():
            steps = tuple(dataclasses.replace(s, artifact=path, entry=entry_of[s.artifact]) if s.artifact in entry_of
                          else s for s in plan.steps)
            plans[method] = dataclasses.replace(plan, steps=steps)
        merged_paths.append(path)
    return merged_paths
