"""Placement-aware annotation: each node is quantized by the backend that will run it.

The float graph is partitioned first, exactly as lowering does (support matrix, the
priority policy, each backend's partition rules). Then every backend's quantizer
annotates the graph, and the core keeps only the annotations it put on nodes that
backend owns: a node left to portable torch, or to a backend that keeps float, stays
float. Quantize/dequantize pairs therefore appear only where a quantized backend's
partition begins or ends.

A backend that offers no schemes at all keeps working in float. A backend that offers
schemes, but not the one asked for, declines its nodes with that reason, so they go
to the next backend in the user's order or stay float. Asked for `auto`, each backend
quantizes with its own default scheme (`BackendQuantization.scheme`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple

from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from edgeport.partitioners.partition import partition_graph
from edgeport.partitioners.support import ask_support, is_compute

from ..backend import Backend, Support, support_question
from ..errors import BackendError, described
from ..fold import constant_nodes
from .annotations import ANNOTATION, quantizes
from .scheme import SCHEMES, Scheme, backend_scheme

QUANTIZES = "quantizes"
FLOAT = "float"
DECLINES = "declines"
SCHEME_OPTION = "scheme"  # the options fields `compile_options` fills in
GROUP_SIZE_OPTION = "group_size"


# why an op stays float although its quantizer annotated it (`Artifact.float_nodes`)
COMPILED_IN_FLOAT = "its compiled artifact computes it in float"


class Ran(NamedTuple):
    """What one backend's artifacts run of a quantized method (`report.quantized_counts`):
    each op as (name, op), in graph order, the names of those that compute quantized, and
    of those it computes in float although quantize and dequantize nodes surround them
    (`Artifact.float_nodes`)."""

    ops: tuple[tuple[str, str], ...] = ()
    quantized: tuple[str, ...] = ()
    in_float: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendQuantization:
    """What one selected backend does with the scheme: QUANTIZES (with `scheme`: the one
    asked for, or the backend's own for `auto`), FLOAT (it offers no quantization, its
    nodes stay float on it) or DECLINES (with `reason`)."""

    status: str
    reason: str = ""
    quantizer: Any = None
    scheme: Scheme | None = None
    # its options take the scheme (`with_scheme`): its toolchain quantizes at compile
    # time too, so how many nodes its quantizer annotated does not say what it quantizes
    at_compile: bool = False


@dataclass
class Placement:
    """The float graph's placement: node name -> backend (or "portable"), and each
    selected backend's answer to the scheme."""

    scheme: Scheme
    owner: dict[str, str]
    backends: dict[str, BackendQuantization] = field(default_factory=dict)
    # backend -> {node: why} for the nodes of its own its quantizer left float
    # (`kept_float`), once it has annotated
    kept_float: dict[str, dict[str, str]] = field(default_factory=dict)
    # node -> its op ("aten.add.Tensor"), for each node a quantizer kept float: a node its
    # quantizer inserted (an attention expanded into products) is renamed when the
    # quantized graph is captured again, and its reason is found again by its op
    kept_float_op: dict[str, str] = field(default_factory=dict)
    # backend -> how many of its ops its quantizer quantized, once it has annotated (with
    # those whose weight a compile-time quantizer names in its `compressed`)
    quantized: dict[str, int] = field(default_factory=dict)
    # backend -> how many ops it owns in the annotated graph (a batch norm folded into its
    # conv is gone), once annotated
    ops: dict[str, int] = field(default_factory=dict)

    @property
    def declined(self) -> dict[str, str]:
        """backend -> the reason it declines every node (lowering repeats it)."""
        return {b: q.reason for b, q in self.backends.items() if q.status == DECLINES}

    @property
    def quantizing(self) -> list[str]:
        """The backends that quantize with the scheme (or, for `auto`, their own)."""
        return [name for name, q in self.backends.items() if q.status == QUANTIZES]

    def quantizes_nothing(self, ran: Mapping[str, Ran] | None = None) -> bool:
        """No backend quantizes any node: the program runs in float. Before lowering,
        as the quantizers annotated; with `ran` (as `summary`), as the artifacts run.
        (A backend whose toolchain quantizes at compile time counts as quantizing the
        nodes its quantizer names in `compressed`; without that attribute, all its nodes
        unless its quantizer says it leaves every one of them float: Core ML compresses no
        weight of 2,048 elements or fewer.)"""
        owners = set(self.owner.values())

        def quantizes_some(name: str, q: BackendQuantization) -> bool:
            if q.status != QUANTIZES:
                return False
            if q.at_compile:  # what its quantizer says it compresses, else all but what it keeps float
                if name in self.quantized:
                    return self.quantized[name] > 0
                return name in owners and len(self.kept_float.get(name) or {}) < self.ops.get(name, 1)
            return bool(ran.get(name, Ran()).quantized if ran is not None else self.quantized.get(name))

        return not any(quantizes_some(name, q) for name, q in self.backends.items())

    def summary(self, ran: Mapping[str, Ran] | None = None) -> dict[str, str]:
        """backend -> one line on what it did with the scheme. `ran`: what each backend's
        artifacts run once lowered (`report.quantized_counts`), counted instead of what
        its quantizer annotated; not for a backend that quantizes at compile time (its
        graph has no quantize nodes to count)."""
        out = {}
        for name, q in self.backends.items():
            taken = self.ops.get(name, sum(1 for owner in self.owner.values() if owner == name))
            quantized = self.quantized.get(name)
            kept_float = self.kept_float.get(name) or {}
            if ran is not None and not q.at_compile:
                if name not in ran and quantized:  # placed and annotated, yet runs nothing: compiles failed
                    out[name] = (f"offers {q.scheme.name}, but its {taken} op(s) fell back to portable torch, which "
                                 "runs them fake-quantized (the partitions' fallback says why)")
                    continue
                runs = ran.get(name, Ran())
                taken, quantized = len(runs.ops), len(runs.quantized)
                kept_float = _as_run(kept_float, runs, self.kept_float_op)
            if q.at_compile and quantized is None and kept_float:  # its compiler compresses the rest
                quantized = taken - len(kept_float)
            if q.status == QUANTIZES:
                out[name] = _quantizes(q.scheme, taken, quantized, kept_float)
            elif q.status == FLOAT:
                out[name] = f"keeps its {taken} node(s) float: {q.reason}"
            else:
                out[name] = f"declines: {q.reason}"
        return out


def _as_run(kept_float: dict[str, str], runs: Ran, op_of: Mapping[str, str]) -> dict[str, str]:
    """Each op the artifacts run in float, with its quantizer's reason: what they run wins
    over what the quantizer meant (a split it left unannotated moves quantized values, and
    its quantizer cannot know that). The graph lowered is captured again after quantizing,
    which renames some nodes (those the quantizer inserted, some views): a node kept float
    under a name the lowered graph does not have gives its reason to a float op of its kind
    (`op_of`), in order; one between quantized ops that no reason is left for computes in
    float in its compiled artifact. (Other ops no reason names are those a run-time scheme
    is not for: a conv under int8-dynamic.)"""
    order = {node: rank for rank, node in enumerate(kept_float)}  # the quantizer's reasons first, in its order
    lowered = {node for node, _ in runs.ops}
    renamed = [(op_of.get(node), node) for node in kept_float if node not in lowered]
    float_ = {}
    for node, op in runs.ops:
        if node in runs.quantized:
            continue
        found = next((i for i, (kind, _) in enumerate(renamed) if kind == op), None)
        named = node if node in kept_float else None if found is None else renamed.pop(found)[1]
        if named:
            float_[node] = (order[named], kept_float[named])
        elif node in runs.in_float:
            float_[node] = (len(order), COMPILED_IN_FLOAT)
    return {node: why for node, (_, why) in sorted(float_.items(), key=lambda item: item[1][0])}


def _quantizes(scheme: Scheme, taken: int, quantized: int | None, kept_float: dict[str, str]) -> str:
    """E.g. "quantizes 3 of its 8 op(s) with int8-dynamic, but 2 stay float: fc2 (why),
    head (why)" (the 2: ops the scheme is for that could not take it, as its quantizer's
    `kept_float` says: linears too narrow, a softmax XNNPACK runs in float only),
    or "quantizes none of its 8 op(s) ...". `quantized`: how many its quantizer
    quantized (None: not yet, or its toolchain quantizes at compile time)."""
    if taken == 0:
        return f"offers {scheme.name}, and runs no node of this method"
    if quantized is None or quantized == taken:
        count = f"its {taken}"
    else:
        count = f"{'none' if quantized == 0 else quantized} of its {taken}"
    line = f"quantizes {count} op(s) with {scheme.name}"
    if not kept_float:
        return line
    shown = ", ".join(f"{node} ({why})" for node, why in list(kept_float.items())[:3])
    more = f" and {len(kept_float) - 3} more" if len(kept_float) > 3 else ""
    stay = "stays" if len(kept_float) == 1 else "stay"
    return f"{line}{'; ' if quantized == 0 else ', but '}{len(kept_float)} {stay} float: {shown}{more}"


def backend_quantization(backend: Backend, scheme: Scheme, options: Any) -> BackendQuantization:
    """Ask `backend` for its quantizer of `scheme` (for `auto`: of its own default)."""
    offered = sorted(backend.schemes)
    if not offered:
        return BackendQuantization(FLOAT, "the backend offers no quantization schemes")
    name = backend_scheme(scheme, frozenset(backend.schemes), backend.default_scheme)
    if name is None:
        wanted = "a static scheme" if scheme.per_backend else scheme.name
        why = "" if scheme.per_backend else backend.schemes_declined.get(scheme.name, "")
        because = f": {why}" if why else ""
        return BackendQuantization(DECLINES,
                                   f"{backend.name} does not offer {wanted} (it offers {', '.join(offered)}){because}")
    chosen = scheme if name == scheme.name else dataclasses.replace(SCHEMES[name], qat=scheme.qat)
    from .flow import import_torchao  # flow imports this module

    import_torchao()  # quietly, before a backend's quantizer module imports it with its log lines
    try:
        quantizer = backend.quantizer(chosen, options)
    except BackendError as error:  # the options rule the scheme out: say which and how to fix it
        hint = f" ({error.hint})" if error.hint else ""
        return BackendQuantization(DECLINES, f"{error}{hint}")
    except Exception as exc:  # the plugin's bug: name it, as edgeport's own "internal error" did not
        raise BackendError(f"backend {backend.name!r}: quantizer({name!r}) raised {described(exc)}",
                           hint="a bug in the backend (quantizer returns a Quantizer or None, or raises "
                                f"edgeport.BackendError naming the option): report it to its authors, or quantize "
                                f"without {backend.name}") from exc
    if quantizer is None:
        return BackendQuantization(DECLINES, f"{backend.name} has no {name} quantizer for these options")
    return BackendQuantization(QUANTIZES, quantizer=quantizer, scheme=chosen, at_compile=_takes_scheme(options))


def place(program: ExportedProgram, backends: Mapping[str, Backend], options: Mapping[str, Any],
          scheme: Scheme) -> Placement:
    """Partition the float program as lowering would, after asking each backend about
    `scheme` (a backend that declines it declines every node).

    A node whose value depends only on weights and literals is no backend's to
    quantize: export computes it once (core/fold.py), so it has no run-time range to
    calibrate, and its readers quantize it as one of their inputs. (T5's relative
    position buckets take the log of a distance of 0: an observer there measured -inf,
    and the export was refused.)"""
    answers = {name: backend_quantization(b, scheme, options[name]) for name, b in backends.items()}
    nodes = list(program.graph.nodes)
    checks = {name: _support(backend, program, options[name], answers[name]) for name, backend in backends.items()}
    matrix = ask_support(nodes, checks)
    plan = partition_graph(nodes, matrix, list(backends), {b: be.rules for b, be in backends.items()})
    computed_once = {node.name for node in constant_nodes(program)}
    return Placement(scheme, {n: b for n, b in plan.assignment.items() if n not in computed_once}, answers)


def compile_options(placement: Placement, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options each backend compiles with. A backend that quantizes, and whose
    options dataclass has a `scheme` field, gets the scheme's name there (and its group
    size in a `group_size` field): for what its toolchain applies at compile time and
    no PT2E annotation expresses (Core ML's weight palettization and compression)."""
    out = dict(options)
    for name, answer in placement.backends.items():
        if answer.status == QUANTIZES:
            out[name] = with_scheme(options[name], answer.scheme)  # for `auto`, the backend's own
    return out


def with_scheme(options: Any, scheme: Scheme) -> Any:
    """A backend's ``options`` naming ``scheme`` in their `scheme` field (and its group
    size in `group_size`); options without a `scheme` field are returned as they are."""
    if not _takes_scheme(options):
        return options
    changes: dict[str, Any] = {SCHEME_OPTION: scheme.name}
    if GROUP_SIZE_OPTION in _fields(options) and scheme.group_size is not None:
        changes[GROUP_SIZE_OPTION] = scheme.group_size
    return dataclasses.replace(options, **changes)


def _fields(options: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(options)} if dataclasses.is_dataclass(options) else set()


def _takes_scheme(options: Any) -> bool:
    return SCHEME_OPTION in _fields(options)


def _support(backend: Backend, program: ExportedProgram, options: Any,
             answer: BackendQuantization) -> Callable[[Node], Support]:
    if answer.status == DECLINES:
        no = Support.no(answer.reason)
        return lambda node: no
    return support_question(backend, program, options)


def annotate_placed(model: GraphModule, placement: Placement) -> None:
    """Run every quantizing backend's annotation, keeping each only on its own nodes."""
    from ..report import op_name  # the report imports this module

    for name, answer in placement.backends.items():
        if answer.status != QUANTIZES:
            continue
        before = {node: node.meta.get(ANNOTATION) for node in model.graph.nodes}
        answer.quantizer.annotate(model)
        kept = getattr(answer.quantizer, "kept_float", None) or {}
        placement.kept_float[name] = {n: why for n, why in kept.items() if placement.owner.get(n) == name}
        placement.kept_float_op.update((node.name, op_name(node)) for node in model.graph.nodes
                                       if node.name in placement.kept_float[name])
        for node in model.graph.nodes:
            if placement.owner.get(node.name) == name or node.meta.get(ANNOTATION) is before.get(node):
                continue
            if before.get(node) is None:
                node.meta.pop(ANNOTATION, None)
            else:
                node.meta[ANNOTATION] = before[node]
        own = [node for node in model.graph.nodes if placement.owner.get(node.name) == name and is_compute(node)]
        placement.ops[name] = len(own)
        compressed = getattr(answer.quantizer, "compressed", None)  # at compile time: the nodes whose weight
        if not answer.at_compile or compressed is not None:
            placement.quantized[name] = sum(1 for node in own if quantizes(node) or node.name in (compressed or ()))


def placed_quantizer(placement: Placement) -> Any:
    """A torchao `Quantizer` that annotates with `annotate_placed` (imports torchao)."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class PlacedQuantizer(Quantizer):
        """Each backend's quantizer, restricted to the nodes that backend owns.

        Backends' `transform_for_annotation` is not called: the graph must keep the
        nodes the placement named. A quantizer's `expand` rewrites its own nodes instead
        (expand.py), and its `validate` and observer callback are called.
        """

        def transform_for_annotation(self, model: GraphModule) -> GraphModule:
            from .expand import expand_placed  # expand imports this module

            expand_placed(model, placement)
            return model

        def annotate(self, model: GraphModule) -> GraphModule:
            annotate_placed(model, placement)
            return model

        def validate(self, model: GraphModule) -> None:
            for q in _quantizers(placement):
                q.validate(model)

        def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
            for q in _quantizers(placement):
                q.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

    return PlacedQuantizer()


def _quantizers(placement: Placement) -> list[Any]:
    return [a.quantizer for a in placement.backends.values() if a.status == QUANTIZES]
