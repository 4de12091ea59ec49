"""Row updates of program state: write the few rows a call changes, not the whole buffer.

A KV cache is a large buffer of which a decode step changes one row per layer. Written
back the ordinary way (a mutated buffer's new value is a method output), the delegate
would return the whole new cache on every token and the runtime would store it: two
full copies per token. Instead:

- at export, `split_row_updates` finds each mutated buffer whose new value is
  ``index_put(buffer, [None, ..., positions], rows)`` of the buffer itself (what
  ``buffer.index_copy_(dim, positions, rows)`` or ``buffer[:, positions] = rows``
  exports as), where ``positions`` is a method input and nothing else reads the new
  value. The graph then outputs ``rows`` in its place, and the method plan records a
  `RowUpdate` instead of a full state write;
- at run time, `apply_row_updates` writes the rows into the state in place when the
  call finishes, as a full write would have been applied;
- `place_state` lets the runtime keep a state *inside* a delegate: its storage becomes
  the executable's own input buffer (an executable that offers `input_buffer`), so the
  delegate reads the cache where it lies and the rows are written straight into it.
  Nothing of the cache is copied per call; another method that reads the same state
  gets it as an ordinary input (its executable copies it, once per call).

A method that attends over only the filled part of a cache reads its first rows,
``cache[:n]`` with n from an input's shape. Exported as it is, that slice would be the
delegate's to run, on a copy of the rows it reads. Instead `split_state_prefixes` makes
the state itself the delegate's input, of n rows, and records a `StatePrefix`: the
runtime passes ``state[:n]``, a view of a prefix (rows along the first dim are
contiguous), and an executable holding the placed state binds that prefix where it lies
(`InPlaceInputs.input_buffer` with the state's full shape). No row is copied.

The run side holds state as torch tensors where torch is installed and as numpy arrays
where it is not (`edgeport.arrays`), and imports no torch; the export side does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, MutableMapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .errors import ExecutionError, ProgramError
from .manifest import MethodPlan, RowUpdate, StatePrefix

if TYPE_CHECKING:
    from torch.export import ExportedProgram
    from torch.fx import Node

# -- export side ------------------------------------------------------------------------


def split_row_updates(program: ExportedProgram) -> tuple[RowUpdate, ...]:
    """Turn each full-buffer write that only sets rows into a `RowUpdate` (in place).

    The buffer stays a mutated buffer of ``program`` (so it stays program state, never
    a constant); its mutation output becomes the rows themselves.
    """
    from torch.export.graph_signature import InputKind, OutputKind, OutputSpec, TensorArgument

    signature = program.graph_signature
    user_inputs = set(signature.user_inputs)
    buffer_of = {s.arg.name: s.target for s in signature.input_specs if s.kind == InputKind.BUFFER}
    graph = program.graph_module.graph
    output = graph.output_node()
    updates: list[RowUpdate] = []
    for i, spec in enumerate(signature.output_specs):
        if spec.kind != OutputKind.BUFFER_MUTATION:
            continue
        node = next((n for n in output.all_input_nodes if n.name == spec.arg.name), None)
        found = _row_write(node, spec.target, buffer_of, user_inputs) if node is not None else None
        if found is None or any(u.rows == found[2].name for u in updates):
            continue  # (the same rows written into two states stay full writes: outputs are named once)
        dim, positions, rows = found
        output.replace_input_with(node, rows)
        graph.erase_node(node)
        signature.output_specs[i] = OutputSpec(OutputKind.BUFFER_MUTATION, TensorArgument(name=rows.name), spec.target)
        updates.append(RowUpdate(state=spec.target, dim=dim, positions=positions.name, rows=rows.name))
    if updates:
        program.graph_module.recompile()
    return tuple(updates)


def _row_write(node: Node, fqn: str, buffer_of: Mapping[str, str], user_inputs: set[str]) -> tuple[int, Node, Node] | None:
    """(dim, positions, rows) if ``node`` writes rows of buffer ``fqn`` and nothing else reads it."""
    import torch
    from torch.fx import Node

    aten = torch.ops.aten
    if node.op != "call_function" or node.target != aten.index_put.default or len(node.users) != 1:
        return None
    buffer, indices, rows = node.args[:3]
    accumulate = node.args[3] if len(node.args) > 3 else node.kwargs.get("accumulate", False)
    if accumulate or not isinstance(buffer, Node) or buffer_of.get(buffer.name) != fqn:
        return None
    tensors = [(d, ix) for d, ix in enumerate(indices) if ix is not None]
    if len(tensors) != 1 or not isinstance(rows, Node):
        return None
    dim, positions = tensors[0]
    if not isinstance(positions, Node) or positions.name not in user_inputs:
        return None  # the runtime must know the positions without running anything
    shape, pos, new = (n.meta.get("val") for n in (buffer, positions, rows))
    if not all(isinstance(v, torch.Tensor) for v in (shape, pos, new)) or pos.dim() != 1:
        return None
    expected = list(shape.shape)
    expected[dim] = pos.shape[0]
    if list(new.shape) != expected or new.dtype != shape.dtype or pos.dtype not in (torch.int64, torch.int32):
        return None
    return dim, positions, rows


def split_state_prefixes(program: ExportedProgram) -> tuple[StatePrefix, ...]:
    """Turn each state read only as ``state[:n]`` along its first dim, n the size of a
    user input's dim, into a `StatePrefix` (in place): the graph then reads the state
    itself at n rows. Run after `split_row_updates` (a row write reads the whole state)."""
    from torch.export.graph_signature import InputKind

    signature = program.graph_signature
    states = set(signature.buffers_to_mutate.values())
    graph = program.graph_module.graph
    prefixes = []
    for spec in signature.input_specs:
        if spec.kind != InputKind.BUFFER or spec.target not in states:
            continue
        node = next(n for n in graph.nodes if n.op == "placeholder" and n.name == spec.arg.name)
        length = _prefix_length(node, set(signature.user_inputs))
        if length is None:
            continue
        slices = list(node.users)
        for read in slices:
            read.replace_all_uses_with(node)
            graph.erase_node(read)
        node.meta["val"] = slices[0].meta["val"]
        size_of = length.args[0]
        prefixes.append(StatePrefix(value=node.name, length_of=size_of.name, length_dim=int(length.args[1])))
        if not length.users:
            graph.erase_node(length)
    if prefixes:
        program.graph_module.recompile()
    return tuple(prefixes)


_SLICE_DEFAULTS = (0, None, None, 1)  # aten.slice.Tensor's dim, start, end, step


def _prefix_length(state: Node, user_inputs: set[str]) -> Node | None:
    """The ``sym_size(input, dim)`` node if every reader of ``state`` is
    ``slice(state, 0, 0, that size)``; else None."""
    import torch
    from torch.fx import Node

    aten = torch.ops.aten
    ends = set()
    for read in state.users:
        if read.op != "call_function" or read.target != aten.slice.Tensor:
            return None
        dim, start, end, step = (*read.args[1:], *_SLICE_DEFAULTS[len(read.args) - 1:])
        if dim != 0 or start not in (None, 0) or step != 1 or not isinstance(end, Node):
            return None
        ends.add(end)
    if len(ends) != 1:
        return None
    (end,) = ends
    if end.target != aten.sym_size.int or not isinstance(end.args[0], Node) or end.args[0].name not in user_inputs:
        return None
    return end


# -- run side ---------------------------------------------------------------------------


def row_update_values(plan: MethodPlan) -> set[str]:
    """Values a method must keep until its call ends, to apply its row updates."""
    return {name for u in plan.row_updates for name in (u.rows, u.positions)}


def apply_row_updates(state: Mapping[str, Any], updates: Iterable[RowUpdate], values: Mapping[str, Any]) -> None:
    """Write each update's rows into its state (a torch tensor or a numpy array), in
    place. Positions outside a state raise `ExecutionError` before any row of that state
    is written: numpy counts a negative position from the end (it wrote the last row
    where eager torch refuses), and torch's ``index_copy_`` wrote the rows before the
    first bad position."""
    positions: dict[str, tuple[Any, int, int]] = {}  # value -> (index, lowest, highest), converted once
    for u in updates:
        target, rows = state[u.state], values[u.rows]
        if u.positions not in positions:
            positions[u.positions] = _positions(values[u.positions], numpy=isinstance(target, np.ndarray))
        where, lowest, highest = positions[u.positions]
        size = target.shape[u.dim]
        try:
            if lowest < 0 or highest >= size:
                raise IndexError(f"position {lowest if lowest < 0 else highest} is outside its {size} rows")
            if isinstance(target, np.ndarray):
                index: list[Any] = [slice(None)] * target.ndim
                index[u.dim] = where
                target[tuple(index)] = rows
                continue
            import torch  # the state is a torch tensor: torch is here

            target.index_copy_(u.dim, where, torch.from_numpy(rows) if isinstance(rows, np.ndarray) else rows)
        except (IndexError, ValueError, RuntimeError) as e:  # numpy's and torch's ways to say "out of range"
            raise ExecutionError(f"rows at positions {np.asarray(values[u.positions]).tolist()} do not fit state "
                                 f"{u.state!r}, {tuple(target.shape)} along dim {u.dim}: {e}") from None


def _positions(value: Any, numpy: bool) -> tuple[Any, int, int]:
    """A positions value as the index a write takes (numpy's, or torch's int64 tensor), with
    its lowest and highest position (0 and -1 when there is none)."""
    array = np.asarray(value, dtype=np.int64)
    bounds = (int(array.min()), int(array.max())) if array.size else (0, -1)
    if numpy:
        return _as_index(array), *bounds
    import torch  # a torch state: torch is here

    return value.to(torch.int64), *bounds


def _as_index(positions: np.ndarray) -> np.ndarray | slice:
    """Ascending consecutive positions (a decode step's one, a prefill chunk's run) as a
    slice: numpy writes rows through a slice ~6x faster than through an index array,
    and a KV cache takes 60 such writes a token."""
    if positions.ndim == 1 and len(positions) and positions[0] >= 0 and \
            (len(positions) == 1 or bool((np.diff(positions) == 1).all())):
        start = int(positions[0])
        return slice(start, start + len(positions))
    return positions


@runtime_checkable
class InPlaceInputs(Protocol):
    """An executable whose inputs can live in its own buffers.

    ``input_buffer(i)`` returns a writable array that *is* input ``i``'s storage, valid
    for the executable's lifetime, or None. Passing that same array (or a tensor over
    it) as input ``i`` of ``run`` then copies nothing. ``rows_of`` (an input read as a
    `StatePrefix`, of a dynamic first dim): the shape of the whole state; the buffer has
    it, and passing any prefix of it (a view from its start) copies nothing.
    """

    def input_buffer(self, index: int, rows_of: tuple[int, ...] | None = None) -> np.ndarray | None: ...


def place_state(
    plan: MethodPlan,
    steps: Sequence[tuple[Sequence[str], Any]],
    state: MutableMapping[str, Any],
    fully_written: set[str],
) -> list[str]:
    """Move each state that ``plan`` reads into the input buffer of the delegate that
    reads it, where that executable offers one; returns the states placed.

    ``steps`` are (input value names, executable) in plan order. A state some method
    writes whole (``fully_written``) stays where it is: a full write replaces the tensor.
    """
    placed = []
    prefixes = {p.value for p in plan.state_prefixes}
    for names, executable in steps:
        if not isinstance(executable, InPlaceInputs):
            continue
        for index, name in enumerate(names):
            fqn = plan.state_reads.get(name)
            if fqn is None or fqn in fully_written or fqn in placed:
                continue
            rows_of = tuple(state[fqn].shape) if name in prefixes else None
            buffer = executable.input_buffer(index, rows_of)
            if buffer is None:
                continue
            placed_state = _into(buffer, state[fqn])
            if placed_state is not None:
                state[fqn] = placed_state
                placed.append(fqn)
    return placed


def _into(buffer: np.ndarray, current: Any) -> Any:
    """``current`` copied into ``buffer``, as the state's kind (a numpy array, or a torch
    tensor over the buffer); None when their shapes or dtypes differ.

    Nothing is copied when every byte of both is 0 (an empty KV cache, stored as a fill,
    and a buffer just allocated; reading their untouched pages takes no memory, 0.05 s
    per 360 MiB): the copy wrote every page of the buffer, so SmolLM2 at 8,192 positions
    held its whole 360 MiB cache from the load on, and loaded 1.2 s slower."""
    if isinstance(current, np.ndarray):
        if buffer.shape != current.shape or buffer.dtype != current.dtype:
            return None
        if _any_byte(current) or _any_byte(buffer):
            np.copyto(buffer, current)
        return buffer
    import torch  # a torch tensor: torch is here

    tensor = torch.from_numpy(buffer)
    if tensor.shape != current.shape or tensor.dtype != current.dtype:
        return None
    if bool(current.reshape(-1).view(torch.uint8).any()) or _any_byte(buffer):
        tensor.copy_(current)
    return tensor


def _any_byte(array: np.ndarray) -> bool:
    """Whether any byte of ``array`` is not 0 (a -0.0 is not a zero here)."""
    return bool(np.ascontiguousarray(array).reshape(-1).view(np.uint8).any())


def check_row_updates(plan: MethodPlan, state: Mapping[str, Any]) -> None:
    """Every row update of ``plan`` names a state the program has (checked at load)."""
    for u in plan.row_updates:
        if u.state not in state:
            raise ProgramError(f"method {plan.name!r} updates rows of unknown state {u.state!r}")
        if not 0 <= u.dim < state[u.state].ndim:
            raise ProgramError(f"method {plan.name!r} updates state {u.state!r} along dim {u.dim}, which it lacks")
