"""Capture: ``torch.export`` the model, then decompose it to the edge op set.

Inputs and outputs a program cannot hold (a Python number, a complex tensor) are
refused here, in the user's terms, before they reach lowering.

Decomposition keeps undecomposed every op that a selected backend lists in
``keep_ops()`` and supports at one of its nodes; an op kept for nobody is decomposed
after all, so other backends get the pieces they may know. Quantize and dequantize
ops a model calls itself (``edgeport.llm``'s quantized weights do) stay whole too,
as the quantization flow keeps them: they are the patterns backends recognize.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.fx import Node

from .backend import Backend, support_question
from .errors import BackendError, EdgeportError, a_type, described
from .native_output import TOOLCHAIN_LOG_ENV, loggers_at
from .tensors import DTYPE_NAMES, DTYPES

log = logging.getLogger("edgeport.export")


def capture(
    model: torch.nn.Module,
    example_inputs: tuple[Any, ...],
    backends: Sequence[Backend],
    options: Mapping[str, Any],
    dynamic_shapes: Any = None,
) -> ExportedProgram:
    if not isinstance(model, torch.nn.Module):  # torch's refusal came with a hint about --debug
        raise EdgeportError(f"the model is {a_type(model)}, not a torch.nn.Module",
                            hint="export a module: wrap a function in a torch.nn.Module whose forward calls it")
    given_a_list = isinstance(example_inputs, list)
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    check_inputs(example_inputs)
    if not given_a_list:  # a list is one argument: torch's failure gets the hint for that
        check_arguments(model, example_inputs)
    check_on_cpu(model, example_inputs)
    try:
        with _quiet_torch():
            exported = torch.export.export(model, example_inputs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise _capture_error(exc, given_a_list) from exc
    kept = {b.name: _keep_ops(b) for b in backends}
    keep = {op: [b for b in backends if op in kept[b.name]] for b in backends for op in kept[b.name]}
    quantization = _registered_quant_ops()
    program = _decompose(exported, set(keep) | quantization)
    keepers = {b.name: b for op in keep for b in keep[op]}
    questions = {name: support_question(b, program, options.get(name)) for name, b in keepers.items()}  # prepared once
    unwanted = {op for op in keep if _kept_for_nobody(program, op, [questions[b.name] for b in keep[op]])}
    if unwanted:  # decompose again (a second trace), only when it changes something
        program = _decompose(exported, (set(keep) - unwanted) | quantization)
    check_outputs(program)
    check_no_side_effects(program)
    return drop_proven_assertions(program)


# torch's line for a dim marked dynamic that the example's size (0 or 1) made a constant
_SPECIALIZED = re.compile(r"You marked (\w+) as dynamic but your code specialized it to be a constant \(([01])\)")


def _capture_error(exc: Exception, given_a_list: bool = False) -> EdgeportError:
    """torch.export's failure as one error: its first line, and for violated dim
    constraints the line naming each dim (the first line alone, "Constraints violated
    (b)!", said neither which nor why). A dim whose example size is 0 or 1 is the usual
    cause: torch specializes those sizes, so a batch-1 example with a dynamic batch failed.
    A branch on a tensor's value and example inputs given as a list (passed to forward as
    one argument) get a hint naming them: torch's own lines name neither."""
    lines = [line.strip() for line in str(exc).strip().splitlines()]
    first = lines[0] if lines else type(exc).__name__
    reasons = [line.removeprefix("- ").split(". ")[0].rstrip(".") + "." for line in lines[1:]
               if line.startswith("- You marked")]  # its first sentence: the rest is about mark_dynamic
    message = f"torch.export could not capture the model: {first}" + "".join(f" {r}" for r in reasons[:3])
    specialized = [m.groups() for r in reasons if (m := _SPECIALIZED.search(r))]
    if specialized:
        dims = ", ".join(f"{name} (size {size})" for name, size in specialized)
        return EdgeportError(message, hint=f"the example inputs give {dims} a size torch.export makes a constant: "
                                           "give the example inputs a size of 2 or more along each dynamic dim")
    if given_a_list:
        return EdgeportError(message, hint="the example inputs are a list, which forward gets as one argument: "
                                           "give a tuple, (x,) or (x, y), for forward(x) or forward(x, y)")
    if "data-dependent" in first:
        return EdgeportError(message, hint="the model branches on, or sizes a tensor by, a tensor's values "
                                           "(`if x.sum() > 0`, `int(n)`), which torch.export cannot capture: use "
                                           "torch.where or torch.cond, or move that logic out of forward; "
                                           "--debug shows the line")
    return EdgeportError(message, hint="run with --debug for torch's full message; see "
                                       "https://pytorch.org/docs/stable/export.html")


def _keep_ops(backend: Backend) -> set[Any]:
    """``backend.keep_ops()``, refused with the reason unless it is a set of torch op
    overloads: names (what `support` reasons mention) failed deep in decomposition."""
    try:
        ops = backend.keep_ops()
    except Exception as exc:  # the plugin's bug, named as such: it was edgeport's "internal error"
        raise BackendError(f"backend {backend.name!r}: keep_ops() raised {described(exc)}",
                           hint="a bug in the backend (keep_ops returns a set of ops, never raises): report it to "
                                f"its authors, or export without {backend.name}") from exc
    if isinstance(ops, (str, bytes)) or not all(isinstance(op, torch._ops.OpOverload) for op in ops):
        shown = ops if isinstance(ops, (str, bytes)) else next(op for op in ops if not isinstance(op, torch._ops.OpOverload))
        raise BackendError(f"backend {backend.name!r}: keep_ops() holds {shown!r}, not a torch op overload",
                           hint="return ops such as {torch.ops.aten.linear.default}, not their names")
    return set(ops)


# What a program file can hold, in the user's terms: inputs and outputs are tensors of
# the dtypes in `tensors.DTYPES`.
_INTERFACE_HINT = "program inputs and outputs are tensors of: " + ", ".join(DTYPES)


def check_arguments(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> None:
    """Refuse, before tracing, example inputs that forward's signature does not take as
    positional arguments: a program is called with its inputs in order, so a required
    keyword-only argument can never be given (torch said "missing a required argument:
    'scale'" and to rerun with --debug)."""
    try:
        signature = inspect.signature(model.forward)
    except (TypeError, ValueError):  # a forward inspect cannot read: torch.export will say what it finds
        return
    keyword_only = [p.name for p in signature.parameters.values()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty]
    if keyword_only:
        names = ", ".join(repr(name) for name in keyword_only)
        it, has = ("it", "has") if len(keyword_only) == 1 else ("them", "have")
        raise EdgeportError(f"forward's keyword-only argument {names} {has} no default, and a program takes its "
                            "inputs in order, as positional arguments",
                            hint=f"make {it} positional (def forward(self, x, {keyword_only[0]})) and add {it} to the "
                                 f"example inputs, or give {it} a default")
    try:
        signature.bind(*example_inputs)
    except TypeError as exc:
        positional = [p for p in signature.parameters.values()
                      if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        required = [p.name for p in positional if p.default is inspect.Parameter.empty]
        optional = [p.name for p in positional if p.default is not inspect.Parameter.empty]
        wanted = ", ".join(required) + (f" (then, optionally, {', '.join(optional)})" if optional else "")
        raise EdgeportError(f"the example inputs do not fit forward({', '.join(p.name for p in positional)}): {exc}",
                            hint=f"give the example inputs as a tuple in forward's order: {wanted}") from None


def check_inputs(example_inputs: tuple[Any, ...]) -> None:
    """Refuse, before tracing, example inputs a program cannot take: a Python number
    (torch.export would bake it into the graph), a tensor of a dtype files cannot hold,
    or a sparse tensor, or one tensor given twice (torch.export captures it as one
    input, so the program would read one of the two places for both)."""
    seen: dict[int, int] = {}
    for i, value in enumerate(pytree.tree_leaves(example_inputs)):
        if isinstance(value, torch.Tensor):
            first = seen.setdefault(id(value), i)
            if first != i:
                raise EdgeportError(f"inputs {first} and {i} of the model are the same tensor; the program would "
                                    "read one input for both", hint="pass a copy for one of them (x.clone())")
        if value is None:
            raise EdgeportError(f"input {i} of the model is None; programs take tensors only",
                                hint="leave it out of the example inputs, so the model uses its default")
        if not isinstance(value, torch.Tensor):
            raise EdgeportError(
                f"input {i} of the model is a Python {type(value).__name__} ({value!r}); programs take tensors only",
                hint=f"pass it as a tensor (torch.tensor({value!r})), or make it a constant inside the model",
            )
        if value.dtype not in DTYPE_NAMES:
            raise EdgeportError(f"input {i} of the model is {_dtype(value.dtype)}, which a program cannot hold",
                                hint=_INTERFACE_HINT)
        if value.layout != torch.strided:  # sparse: torch's serializer fails on one at save, much later
            raise EdgeportError(f"input {i} of the model is a {str(value.layout).removeprefix('torch.')} tensor; "
                                "programs take dense tensors", hint="pass x.to_dense() and convert inside the model")


def check_on_cpu(model: torch.nn.Module, example_inputs: tuple[Any, ...]) -> None:
    """Refuse, before tracing, a model or input off the CPU: backends compile weights they
    read on the host, and a meta tensor (a model built without weights) has none to read
    (it failed in a backend's compile, then in lowering, as an internal error)."""
    named = [(f"input {i}", v) for i, v in enumerate(pytree.tree_leaves(example_inputs)) if isinstance(v, torch.Tensor)]
    named += [(f"weight {n}", t) for n, t in (*model.named_parameters(), *model.named_buffers())]
    for what, tensor in named:
        if tensor.device.type == "meta":
            raise EdgeportError(f"{what} of the model is on the meta device: it has no values to export",
                                hint="load the weights (model.load_state_dict(..., assign=True) or "
                                     "model.to_empty(device='cpu') then load) and pass real input tensors")
        if tensor.device.type != "cpu":
            raise EdgeportError(f"{what} of the model is on {tensor.device}; edgeport exports from the CPU",
                                hint="move the model and its example inputs there first: model.cpu(), x.cpu()")


# Layers that compute otherwise in training mode: dropout drops at random, batch norm
# normalizes by the batch's statistics and updates its running ones.
_TRAINING_LAYERS = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)


def warn_if_training(model: torch.nn.Module) -> None:
    """Warn when a dropout or batch norm layer is in training mode: torch.export captures
    it as it is, so the program drops values at random or normalizes by each call's batch
    (a model.eval() forgotten), with nothing else saying so."""
    if not isinstance(model, torch.nn.Module):
        return
    training = [f"{name or 'the model'} ({type(m).__name__})" for name, m in model.named_modules()
                if m.training and isinstance(m, _TRAINING_LAYERS) and getattr(m, "p", 1) != 0]  # p=0 drops nothing
    if training:
        log.warning("the model is in training mode: %d dropout/batch norm layer(s) (first: %s) are exported as in "
                    "training (random dropout, each call's batch statistics); call model.eval() before exporting",
                    len(training), training[0])


def check_outputs(program: ExportedProgram) -> None:
    """Refuse outputs of a dtype a program file cannot hold (complex numbers, say)."""
    values = {n.name: n.meta.get("val") for n in program.graph.nodes}
    for i, name in enumerate(program.graph_signature.user_outputs):
        value = values.get(name) if isinstance(name, str) else None
        if isinstance(value, torch.Tensor) and value.dtype not in DTYPE_NAMES:
            hint = "return torch.view_as_real(x) for a complex x" if value.is_complex() else _INTERFACE_HINT
            raise EdgeportError(f"output {i} of the model is {_dtype(value.dtype)}, which a program cannot hold",
                                hint=hint)


def check_no_side_effects(program: ExportedProgram) -> None:
    """Refuse an op torch.export orders by effect tokens (`with_effects`): a program's
    steps carry no tokens, and one exported with them could not be loaded ("step 0
    reads 'token' before anything produces it"). torch.linalg.inv decomposes into one:
    the check that raises on a singular matrix."""
    for node in program.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.higher_order.with_effects:
            from .report import source_of  # report imports quantize.flow, which imports this module

            op, where = node.args[1], source_of(node)
            raise EdgeportError(
                f"the model calls {op}, an op with side effects torch.export orders by effect tokens, which "
                f"programs do not carry" + (f" ({where})" if where else ""),
                hint="for torch.linalg.inv, call torch.linalg.inv_ex(x).inverse (no check that raises on a "
                     "singular matrix)" if "linalg" in str(op) else "compute it outside the model",
            )


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# Assertions torch.export inserts about facts it has already proved for the captured
# shapes and dtypes (every Hugging Face decoder LM has them). They compute nothing,
# every backend would decline them, and as portable steps they would cost a call each.
PROVEN_ASSERTIONS = frozenset({torch.ops.aten._assert_tensor_metadata.default})


def drop_proven_assertions(program: ExportedProgram) -> ExportedProgram:
    """Erase `PROVEN_ASSERTIONS` nodes from ``program`` (in place) and return it."""
    graph = program.graph_module.graph
    dropped = [n for n in graph.nodes if n.op == "call_function" and n.target in PROVEN_ASSERTIONS and not n.users]
    for node in dropped:
        graph.erase_node(node)
    if dropped:
        program.graph_module.recompile()
    return program


def _registered_quant_ops() -> frozenset[Any]:
    """The quantize/dequantize ops, when torchao's are registered: a model can call
    them only then, and a float export never imports torchao for this check."""
    if "torchao.quantization.quant_primitives" not in sys.modules:
        return frozenset()
    from .quantize.flow import quant_ops

    return quant_ops()


def _decompose(exported: ExportedProgram, keep: set[Any]) -> ExportedProgram:
    table = torch.export.default_decompositions()
    for op in keep:
        table.pop(op, None)
    with _quiet_torch():
        return exported.run_decompositions(table)


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch.export warns about its own pytree internals on every call; users cannot act
    on it. A model it cannot capture also has torch log the failure and print the graph
    (a meta kernel's traceback, a graph dump: 20 lines) to stderr before the exception
    that `capture` turns into one line; those are shown with --debug
    (`TOOLCHAIN_LOG_ENV`) only. What reaches stderr during a capture that succeeds (the
    model's own prints) is written there after it. sys.stderr and the loggers' levels
    are the process's: one capture at a time sets and restores them."""
    quiet = os.environ.get(TOOLCHAIN_LOG_ENV) != "1"
    stderr = io.StringIO()
    with _CAPTURING, warnings.catch_warnings(), \
            contextlib.redirect_stderr(stderr) if quiet else contextlib.nullcontext():
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
        loggers = [logging.getLogger(name) for name in ["torch", *logging.root.manager.loggerDict]
                   if quiet and (name == "torch" or name.startswith("torch."))]
        with loggers_at(logging.CRITICAL, loggers):
            yield
    sys.stderr.write(stderr.getvalue())


_CAPTURING = threading.RLock()


def _kept_for_nobody(program: ExportedProgram, op: Any, questions: Sequence[Callable[[Node], Any]]) -> bool:
    """True if ``op`` occurs in the program and no backend that kept it supports it."""
    nodes = [n for n in program.graph.nodes if n.op == "call_function" and n.target == op]
    return bool(nodes) and not any(_supports(question, n) for n in nodes for question in questions)


def _supports(question: Callable[[Node], Any], node: Node) -> bool:
    try:
        return bool(question(node))
    except Exception:  # a raising check is a "no"; lowering records its reason
        return False
