"""The pipeline end to end with the test-only torch backend: partitioning, lowering,
fallback, program state, reference execution and input checks."""

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import edgeport
from torch_backend import TorchOpsBackend, registry_with


class Diamonds(torch.nn.Module):
    """Skip connections and diamonds around ops the test backend declines (conv, sigmoid)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.shared = torch.nn.Parameter(torch.randn(4, 1, 1))  # used by two partitions

    def forward(self, x):
        a = torch.relu(x + self.shared)
        b = torch.sigmoid(self.conv(a))  # portable
        c = torch.relu(a * b) + x  # back on the backend, skip from the input
        d = torch.relu(c) * self.shared
        return torch.sigmoid(d) + c, a


def export(model, inputs, backend=None, **kwargs):
    backend = backend or TorchOpsBackend()
    return edgeport.export(model, inputs, [backend.name], registry=registry_with(backend), **kwargs), backend


def assert_close(actual, expected):
    for a, e in zip(torch.utils._pytree.tree_leaves(actual), torch.utils._pytree.tree_leaves(expected)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_diamonds_and_skips_match_eager_and_every_node_is_placed(tmp_path):
    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    program, _ = export(model, (x,))
    report = program.report()
    assert {n["backend"] for n in report["nodes"]} == {"torchops", "portable"}
    placed = {n["name"] for n in report["nodes"]}
    assert placed == {name for p in report["partitions"] for name in p["node_names"] if not name.startswith("getitem")}
    assert_close(program(x), model(x))
    program.save(tmp_path / "d.edgeport")
    assert_close(edgeport.load(tmp_path / "d.edgeport", registry=registry_with(TorchOpsBackend()))(x), model(x))


def test_declined_nodes_carry_the_backends_reason():
    program, _ = export(Diamonds().eval(), (torch.randn(1, 4, 6, 6),))
    conv = next(n for n in program.report()["nodes"] if n["op"] == "aten.convolution.default")
    assert conv["backend"] == "portable"
    assert conv["reasons"] == {"torchops": "torchops has no kernel for aten.convolution.default"}


def test_failed_compile_falls_back_to_portable_with_the_reason():
    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    program, backend = export(model, (x,), TorchOpsBackend(fail_compile=True))
    assert backend.compiled, "the backend was asked to compile"
    assert {n["backend"] for n in program.report()["nodes"]} == {"portable"}
    fallbacks = [p["fallback"] for p in program.report()["partitions"] if p["fallback"]]
    assert fallbacks and all("planted compile failure" in f for f in fallbacks)
    relu = next(n for n in program.report()["nodes"] if n["op"] == "aten.relu.default")
    assert "planted compile failure" in relu["reasons"]["torchops"]
    assert_close(program(x), model(x))


def test_failed_compile_hands_its_nodes_to_the_next_backend(caplog):
    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    broken = TorchOpsBackend("broken", fail_compile=True)
    fallback = TorchOpsBackend("fallback", ops=("relu", "add"))
    program = edgeport.export(model, (x,), ["broken", "fallback"], registry=registry_with(broken, fallback))
    nodes = program.report()["nodes"]
    relus, muls = ([n for n in nodes if n["op"] == op] for op in ("aten.relu.default", "aten.mul.Tensor"))
    assert relus and all(n["backend"] == "fallback" for n in relus)
    assert all("planted compile failure" in n["reasons"]["broken"] for n in relus)
    # an op no other backend supports still falls back to portable, with both reasons
    assert muls and all(n["backend"] == "portable" for n in muls)
    assert all("planted compile failure" in n["reasons"]["broken"] for n in muls)
    assert "its nodes go to the other backends" in caplog.text
    assert_close(program(x), model(x))


def test_strict_mode_raises_naming_partition_and_backend():
    with pytest.raises(edgeport.LoweringError, match=r"partition \d+ .* on 'torchops': compile failed") as info:
        export(Diamonds().eval(), (torch.randn(1, 4, 6, 6),), TorchOpsBackend(fail_compile=True), strict=True)
    assert "next selected backend" in info.value.hint  # not only portable torch: said so when another took them


def test_strict_mode_counts_the_nodes_as_the_placement_table_does():
    """The error said "(90 nodes)" of a ResNet-18 partition the table counts as 69: it
    counted the getitems that pick a batch norm's outputs."""

    class ConvBn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(2, 2, 1), torch.nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x))

    ops = ("convolution", "_native_batch_norm_legit_no_training")
    with pytest.raises(edgeport.LoweringError, match=r"partition 0 \(2 nodes\) on 'torchops'"):
        export(ConvBn().eval(), (torch.randn(1, 2, 4, 4),), TorchOpsBackend(ops=ops, fail_compile=True), strict=True)


def test_nodes_refused_at_compile_time_are_repartitioned():
    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    program, backend = export(model, (x,), TorchOpsBackend(decline_on_compile=["mul"]))
    muls = [n for n in program.report()["nodes"] if n["op"] == "aten.mul.Tensor"]
    assert muls and all(n["backend"] == "portable" for n in muls)
    assert all(n["reasons"]["torchops"] == "refused at compile time" for n in muls)
    relus = [n for n in program.report()["nodes"] if n["op"] == "aten.relu.default"]
    assert all(n["backend"] == "torchops" for n in relus)
    assert_close(program(x), model(x))


@pytest.mark.parametrize(("refused", "reason"), [
    ({}, "compile raised DeclineNodes naming no node"),  # was "compile declined unknown nodes []"
    ({"no_such_node": "x"}, "compile declined nodes the partition does not hold: no_such_node"),
])
def test_a_decline_of_no_node_or_of_nodes_not_given_is_a_failed_compile_saying_which(refused, reason):
    class Declines(TorchOpsBackend):
        def compile(self, program, options):
            raise edgeport.DeclineNodes(refused)

    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    program, _ = export(model, (x,), Declines())
    relus = [n for n in program.report()["nodes"] if n["op"] == "aten.relu.default"]
    assert relus and all(n["backend"] == "portable" and n["reasons"]["torchops"].startswith(reason) for n in relus)


def test_a_compile_that_changes_its_program_and_fails_leaves_the_fallback_as_the_model_is():
    """A plugin's converter that rewrote relu to neg in place and then raised made the
    portable fallback compute neg: the export succeeded and its answers were wrong."""

    class RewritesThenFails(TorchOpsBackend):
        def compile(self, program, options):
            for node in program.graph.nodes:
                if node.target == torch.ops.aten.relu.default:
                    node.target = torch.ops.aten.neg.default
            program.graph_module.recompile()
            raise RuntimeError("converter crashed half-way")

    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    program, _ = export(model, (x,), RewritesThenFails())
    assert {s.kind for s in program.plan("forward").steps} == {"portable"}
    assert_close(program(x), model(x))


class Cache(torch.nn.Module):
    """A KV-cache-like buffer written with index_copy_, read by two methods."""

    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(4, 3))

    def forward(self, pos, value):
        self.cache.index_copy_(0, pos, torch.relu(value))
        return self.cache.sum(0) * 1.0


class ReadCache(torch.nn.Module):
    """Reads the cache another method writes, without writing it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner.cache[:2] * 2.0 + x


class Decode(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pos, value):
        return self.inner(pos, value + 1)


def test_mutated_buffer_is_program_state_shared_by_methods(tmp_path):
    inner = Cache()
    prefill = Decode(inner)  # both wrappers name the buffer "inner.cache"
    decode = Decode(inner)
    pos, value = torch.tensor([0]), torch.ones(1, 3)
    backend = TorchOpsBackend()
    program = edgeport.export_methods(
        {"prefill": (prefill, (pos, value)), "decode": (decode, (pos, value))},
        ["torchops"], registry=registry_with(backend),
    )
    assert list(program.manifest.state) == ["inner.cache"]
    program.save(tmp_path / "kv.edgeport")
    loaded = edgeport.load(tmp_path / "kv.edgeport", registry=registry_with(TorchOpsBackend()))
    eager = Cache()
    for method, (p, v) in [("prefill", (0, 1.0)), ("decode", (1, 2.0)), ("decode", (3, -1.0))]:
        p, v = torch.tensor([p]), torch.full((1, 3), v)
        expected = eager(p, v + 1)
        got = loaded.run(p, v, method=method).outputs
        torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loaded.runtime().state["inner.cache"], eager.cache)


@pytest.mark.parametrize("backends", [["torchops"], ["portable"]])
@pytest.mark.parametrize("read_first", [False, True])
def test_a_method_that_only_reads_state_another_writes_reads_the_state(backends, read_first):
    """torch.export saw the cache as a weight in `read`: it was folded (and delegated) at
    its export-time value, and `read` after `write` returned zeros."""
    inner = Cache()
    methods = {"write": (Decode(inner), (torch.tensor([0]), torch.ones(1, 3))),
               "read": (ReadCache(inner), (torch.zeros(2, 3),))}
    if read_first:
        methods = dict(reversed(methods.items()))
    program = edgeport.export_methods(methods, backends, registry=registry_with(TorchOpsBackend()))
    assert program.manifest.methods["read"].state_reads == {"b_inner_cache": "inner.cache"}
    program.run(torch.tensor([1]), torch.full((1, 3), 2.0), method="write")
    torch.testing.assert_close(program.run(torch.zeros(2, 3), method="read").outputs,
                               torch.tensor([[0.0] * 3, [6.0] * 3]))
    torch.testing.assert_close(program.runtime().state["inner.cache"][1], torch.full((3,), 3.0))


def test_backend_that_cannot_run_here_needs_reference(tmp_path):
    model, x = Diamonds().eval(), torch.randn(1, 4, 6, 6)
    program, _ = export(model, (x,), TorchOpsBackend(can_run=False))
    program.save(tmp_path / "p.edgeport")
    registry = registry_with(TorchOpsBackend(can_run=False))
    with pytest.raises(edgeport.ExecutionError, match="needs backend 'torchops', which cannot run here") as info:
        edgeport.load(tmp_path / "p.edgeport", registry=registry)(x)
    assert "--reference" in info.value.hint
    result = edgeport.load(tmp_path / "p.edgeport", registry=registry, reference=True).run(x, profile=True)
    assert_close(result.outputs, model(x))
    assert "torchops: torch reference" in [s.label for s in result.steps]


class _RaisingPlugin:
    @edgeport.hookimpl
    def edgeport_register_backends(self, register):
        raise RuntimeError("libnpu.so not found")


def test_missing_backend_error_names_it(tmp_path):
    program, _ = export(Diamonds().eval(), (torch.randn(1, 4, 6, 6),))
    program.save(tmp_path / "p.edgeport")
    with pytest.raises(edgeport.ExecutionError, match="needs backend 'torchops'.*not installed") as info:
        edgeport.load(tmp_path / "p.edgeport", registry=registry_with())(torch.randn(1, 4, 6, 6))
    # it keeps no torch reference: the hint said to run with --reference, which then failed too
    assert info.value.hint.startswith("run it where torchops runs, or re-export with keep_reference=True")
    broken = edgeport.Registry(entry_points=False)
    broken.add_plugin(_RaisingPlugin(), name="torchops", distribution="acme-npu")
    with pytest.raises(edgeport.ExecutionError, match="which cannot run here: plugin 'torchops' failed to load: "
                                                      "RuntimeError: libnpu.so not found$"):  # not "it is not installed"
        edgeport.load(tmp_path / "p.edgeport", registry=broken)(torch.randn(1, 4, 6, 6))
    blocked = edgeport.Registry(entry_points=False, disabled=["torchops"])
    with pytest.raises(edgeport.ExecutionError, match="which cannot run here: backend 'torchops' is disabled by "
                                                      "EDGEPORT_DISABLE_PLUGINS"):
        edgeport.load(tmp_path / "p.edgeport", registry=blocked)(torch.randn(1, 4, 6, 6))


@pytest.mark.parametrize(
    "bad, message",
    [
        ((torch.randn(1, 4, 6, 6, dtype=torch.float64),), "must be float32, got float64"),
        ((torch.randn(1, 4, 6),), r"must have shape \[1, 4, 6, 6\]"),
        ((torch.randn(1, 4, 6, 7),), r"got \[1, 4, 6, 7\]"),
        ((torch.randn(1, 4, 6, 6), torch.randn(1)), "takes 1 input"),
        (([1.0],), "must be a tensor"),
    ],
)
def test_inputs_are_checked_against_the_spec(bad, message):
    program, _ = export(Diamonds().eval(), (torch.randn(1, 4, 6, 6),))
    with pytest.raises(edgeport.InputError, match=message) as error:
        program(*bad)
    assert error.value.hint  # every message says what to do (docs/cli.md)


def test_dynamic_dims_are_checked_against_their_range():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU())
    batch = torch.export.Dim("batch", min=2, max=8)
    program, _ = export(model, (torch.randn(4, 3),), dynamic_shapes=({0: batch},))
    x = torch.randn(6, 3)
    torch.testing.assert_close(program(x), model(x))
    with pytest.raises(edgeport.InputError, match=r"outside its range \[2, 8\]") as error:
        program(torch.randn(9, 3))
    assert "wider range" in error.value.hint


def test_an_example_input_viewing_a_larger_tensor_exports():
    """Decomposing a program captured from a view (rows of a data set) adds unbounded
    symbols to its range constraints; torch's int_oo claims to be finite."""
    data = torch.randn(10, 3, 4, 4)
    model = torch.nn.Conv2d(3, 2, 3)
    program, _ = export(model, (data[:4],))
    torch.testing.assert_close(program(data[4:8]), model(data[4:8]))


def test_unknown_backend_lists_installed_ones():
    with pytest.raises(edgeport.UnknownBackendError, match="unknown backend 'nope'; installed: torchops"):
        edgeport.export(Diamonds(), (torch.randn(1, 4, 6, 6),), ["nope"], registry=registry_with(TorchOpsBackend()))


def test_a_misspelt_backend_is_named_with_the_one_it_is_near():
    with pytest.raises(edgeport.UnknownBackendError) as raised:
        edgeport.export(Diamonds(), (torch.randn(1, 4, 6, 6),), ["torchop"], registry=registry_with(TorchOpsBackend()))
    assert raised.value.hint.startswith("did you mean 'torchops'? run `edgeport backends`")


def test_bad_option_names_the_valid_ones():
    with pytest.raises(edgeport.BackendError, match="no option wat") as info:
        export(Diamonds(), (torch.randn(1, 4, 6, 6),), options={"torchops": {"wat": 1}})
    assert "scale" in info.value.hint


def test_an_option_of_the_wrong_type_is_hinted_at_with_its_default_and_flag():
    """"option torchops.scale expects float, got 'abc'" came with no hint, where a value out
    of range says the default and how to set it."""
    with pytest.raises(edgeport.BackendError, match="^option torchops.scale expects float, got 'abc'$") as info:
        export(Diamonds(), (torch.randn(1, 4, 6, 6),), options={"torchops": {"scale": "abc"}})
    assert info.value.hint == "its default is 1.0; set it with --option torchops.scale=VALUE (Python: options={...})"


def test_a_float_option_that_is_no_finite_number_is_refused_at_export():
    """scale=inf passed every check, then failed at save: JSON holds no infinity."""
    with pytest.raises(edgeport.BackendError, match="torchops.scale expects float that is a finite number, got inf"):
        export(Diamonds(), (torch.randn(1, 4, 6, 6),), options={"torchops": {"scale": float("inf")}})


def test_an_options_rule_that_raises_value_error_is_refused_naming_the_backend_and_values():
    """writing-a-backend.md asks a rule across fields to raise BackendError; a ValueError,
    as dataclasses' own checks raise, reached the CLI as edgeport's "internal error"."""

    @dataclasses.dataclass(frozen=True)
    class Strict:
        level: int = 1

        def __post_init__(self):
            if self.level == 3:
                raise ValueError("level 3 is broken on rev A")

    class Ruled(TorchOpsBackend):
        options = Strict

    with pytest.raises(edgeport.BackendError, match="^backend 'torchops' refused the options level=3: ValueError: "
                                                    "level 3 is broken on rev A$") as info:
        edgeport.export(Diamonds(), (torch.randn(1, 4, 6, 6),), ["torchops"], options={"torchops": {"level": "3"}},
                        registry=registry_with(Ruled()))
    assert info.value.hint.startswith("change them (--option torchops.KEY=VALUE)")


class KeepsHardswish(TorchOpsBackend):
    def __init__(self, supports_it: bool):
        super().__init__(ops=("hardswish", "relu") if supports_it else ("relu",))

    def keep_ops(self):
        return {torch.ops.aten.hardswish.default}


@pytest.mark.parametrize("supports_it", [True, False])
def test_keep_ops_stay_undecomposed_only_where_supported(supports_it):
    model = torch.nn.Sequential(torch.nn.Hardswish(), torch.nn.ReLU())
    x = torch.randn(2, 8)
    program, _ = export(model, (x,), KeepsHardswish(supports_it))
    ops = {n["op"] for n in program.report()["nodes"]}
    assert ("aten.hardswish.default" in ops) == supports_it
    assert_close(program(x), model(x))


def test_every_intermediate_value_is_freed_after_its_last_use():
    program, _ = export(Diamonds().eval(), (torch.randn(1, 4, 6, 6),))
    plan, steps, _ = program.runtime()._methods["forward"]
    freed = [name for step in steps for name in step.frees]
    produced = {name for step in plan.steps for name in step.outputs}
    assert len(freed) == len(set(freed))
    assert set(freed) | set(plan.output_values) >= produced
    assert not set(freed) & set(plan.output_values)


def test_a_model_that_mutates_its_input_gets_a_clear_error():
    class Inplace(torch.nn.Module):
        def forward(self, x):
            x.add_(1)
            return x * 2

    with pytest.raises(edgeport.EdgeportError, match="mutates its input"):
        export(Inplace(), (torch.randn(2),))


@pytest.mark.parametrize("constant", ["hello", 3])
def test_a_model_returning_a_constant_beside_a_tensor_is_one_error(constant):
    """A returned string read as a node's name: "internal error: KeyError: 'hello'"."""
    class WithConstant(torch.nn.Module):
        def forward(self, x):
            return x + 1, constant

    with pytest.raises(edgeport.EdgeportError, match=f"the model returns a constant \\({constant!r}\\)"):
        export(WithConstant(), (torch.randn(2),))


def test_a_model_returning_a_number_read_from_a_tensor_is_told_to_return_the_tensor():
    """It said "value _local_scalar_dense is a SymFloat", with no hint."""
    class Item(torch.nn.Module):
        def forward(self, x):
            return x.sum().item()

    with pytest.raises(edgeport.EdgeportError, match="is a Python float computed from a tensor") as raised:
        export(Item(), (torch.randn(3),))
    assert "return the tensor itself" in raised.value.hint


def test_example_inputs_given_as_a_list_are_hinted_at_when_capture_fails():
    """A list is forward's one argument: torch's "conv2d() received an invalid combination"
    alone did not say so."""
    with pytest.raises(edgeport.EdgeportError) as raised:
        export(torch.nn.Conv2d(3, 4, 3), [torch.randn(1, 3, 8, 8)])
    assert "the example inputs are a list, which forward gets as one argument" in raised.value.hint


def test_a_required_keyword_only_argument_is_refused_before_tracing_with_what_to_change():
    """torch said "missing a required argument: 'scale'" and to rerun with --debug: a
    program takes its inputs in order, so that argument could never be given."""
    class Scaled(torch.nn.Module):
        def forward(self, x, *, scale):
            return x * scale

    with pytest.raises(edgeport.EdgeportError, match="forward's keyword-only argument 'scale' has no default") as raised:
        export(Scaled(), (torch.randn(3),))
    assert raised.value.hint == ("make it positional (def forward(self, x, scale)) and add it to the example inputs, "
                                 "or give it a default")


def test_too_few_example_inputs_are_named_against_forwards_arguments():
    class Three(torch.nn.Module):
        def forward(self, x, y, z=None):
            return x * y

    with pytest.raises(edgeport.EdgeportError, match=r"do not fit forward\(x, y, z\): missing a required argument: 'y'") \
            as raised:
        export(Three(), (torch.randn(3),))
    assert raised.value.hint == "give the example inputs as a tuple in forward's order: x, y (then, optionally, z)"
    program, _ = export(Three(), (torch.randn(3), torch.randn(3)))  # z left to its default
    assert len(program.manifest.methods["forward"].inputs) == 2


def test_a_model_in_training_mode_is_exported_with_a_warning_naming_the_layer(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5))
    export(model, (torch.randn(2, 4),))
    assert "the model is in training mode: 1 dropout/batch norm layer(s) (first: 1 (Dropout))" in caplog.text
    caplog.clear()
    export(model.eval(), (torch.randn(2, 4),))
    assert "training mode" not in caplog.text


def test_a_backend_that_takes_no_node_is_named_in_a_warning_with_its_first_reason(caplog):
    """A float64 model on cpu exported 100% portable with nothing said."""
    export(torch.nn.Conv2d(3, 4, 3).double(), (torch.randn(1, 3, 8, 8, dtype=torch.float64),))  # conv: declined
    assert ("forward: torchops took none of the model's nodes: 1 it declined run as portable torch; first: "
            "convolution (aten.convolution.default), its reason: torchops has no kernel for "
            "aten.convolution.default; the model computes in float64: most backends take float32 (model.float() "
            "and float32 inputs)") in caplog.text
    caplog.clear()
    export(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()), (torch.randn(1, 3, 8, 8),))
    assert "took none" not in caplog.text  # it took the relu


def test_a_dtype_mismatch_is_hinted_at_in_the_callers_own_library():
    """A float64 numpy array was told to call .to(torch.float32), which arrays lack."""
    program, _ = export(torch.nn.ReLU(), (torch.randn(2),))
    with pytest.raises(edgeport.InputError) as raised:
        program(np.zeros(2))
    assert raised.value.hint == "convert it with .astype(numpy.float32)"
    with pytest.raises(edgeport.InputError) as raised:
        program(torch.zeros(2, dtype=torch.float64))
    assert raised.value.hint == "convert it with .to(torch.float32)"


def test_a_function_a_missing_file_and_a_missing_method_each_say_what_to_do(tmp_path):
    with pytest.raises(edgeport.EdgeportError, match="the model is a function, not a torch.nn.Module") as raised:
        export(lambda x: x + 1, (torch.randn(2),))
    assert "wrap a function in a torch.nn.Module" in raised.value.hint
    with pytest.raises(edgeport.ProgramError, match="No such file") as raised:
        edgeport.load(tmp_path / "missing.edgeport")
    assert "the path of a .edgeport file" in raised.value.hint
    program, _ = export(torch.nn.ReLU(), (torch.randn(2),))
    with pytest.raises(edgeport.InputError) as raised:
        program.report("decode")
    assert raised.value.hint == "name one of those (method=NAME)"


def test_a_transformers_decoder_lm_exports_and_matches_eager(tmp_path):
    """Every Hugging Face decoder LM carries `_assert_tensor_metadata` nodes; as a
    portable step with no outputs they could not be stored, and export crashed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    llama = LlamaForCausalLM(config).eval()

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.llama = llama

        def forward(self, ids):
            return self.llama(input_ids=ids, use_cache=False).logits

    from edgeport.backends.cpu import CpuBackend
    from edgeport.testing import registry_for

    ids = torch.randint(0, 64, (1, 6))
    registry = registry_for(CpuBackend())
    program = edgeport.export(Logits(), (ids,), ["cpu"], registry=registry)
    assert {n["backend"] for n in program.report()["nodes"]} == {"cpu"}
    program.save(tmp_path / "llama.edgeport")
    assert_close(edgeport.load(tmp_path / "llama.edgeport", registry=registry)(ids), Logits()(ids))


class ChecksAnIndex(torch.nn.Module):
    """A data-dependent runtime check whose result nothing reads."""

    def forward(self, x, i):
        k = i.item()
        torch._check(k >= 0)
        torch._check(k < 4)
        return torch.relu(x) + 1


def test_a_step_of_runtime_checks_alone_is_stored_and_still_checks(tmp_path):
    x = torch.randn(4, 3)
    program, _ = export(ChecksAnIndex(), (x, torch.tensor(2)))
    program.save(tmp_path / "checks.edgeport")
    loaded = edgeport.load(tmp_path / "checks.edgeport", registry=registry_with(TorchOpsBackend()))
    assert_close(loaded(x, torch.tensor(3)), torch.relu(x) + 1)
    with pytest.raises(edgeport.ExecutionError, match="step 0 \\(portable\\) failed: .*u0 <= 3"):
        loaded(x, torch.tensor(7))


def test_a_sparse_input_is_refused_in_one_line_before_capture():
    """Found by the OpInfo sweep (sparse.mm): torch's serializer raised a raw
    SerializeError at the end of the export."""
    sparse = torch.eye(3).to_sparse()
    with pytest.raises(edgeport.EdgeportError, match="input 0 of the model is a sparse_coo tensor") as caught:
        export(torch.nn.Identity(), (sparse,))
    assert "to_dense" in caught.value.hint


class _Inverse(torch.nn.Module):
    def forward(self, x):
        return torch.linalg.inv(x)


def test_an_op_with_side_effects_is_refused_at_export_not_at_load():
    """torch.linalg.inv decomposes into a check ordered by effect tokens: the export
    succeeded and the program failed to load ("step 0 reads 'token' before anything
    produces it"); check raised KeyError: 'token'."""
    x = torch.randn(2, 4, 4) + 4 * torch.eye(4)
    with pytest.raises(edgeport.EdgeportError, match="calls aten._linalg_check_errors.default, an op with side "
                                                      "effects") as caught:
        export(_Inverse(), (x,))
    assert "torch.linalg.inv_ex(x).inverse" in caught.value.hint and "test_export.py" in str(caught.value)


class _Difference(torch.nn.Module):
    def forward(self, a, b):
        return a - b


def test_one_tensor_given_as_two_inputs_is_refused():
    """torch.export captured it as one input: the program read input 1 for both."""
    x = torch.ones(2)
    with pytest.raises(edgeport.EdgeportError, match="inputs 0 and 1 of the model are the same tensor"):
        edgeport.export(_Difference(), (x, x), ["cpu"])


@pytest.mark.parametrize("backends", [None, [None], 3])
def test_backends_that_are_not_names_are_a_backend_error(backends):
    with pytest.raises(edgeport.BackendError, match="backends are named by strings"):
        edgeport.export(_Difference(), (torch.ones(2), torch.ones(2)), backends)


def test_save_where_no_file_can_be_written_is_one_error_and_leaves_nothing(tmp_path):
    """It raised IsADirectoryError / FileNotFoundError and left a .partial file."""
    program = edgeport.export(_Difference(), (torch.ones(2), torch.zeros(2)), ["cpu"])
    (tmp_path / "folder").mkdir()
    for path in (tmp_path / "folder", tmp_path / "missing" / "m.edgeport"):
        with pytest.raises(edgeport.ProgramError, match=f"cannot save the program to {path}"):
            program.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"] and not any((tmp_path / "folder").iterdir())
    with pytest.raises(edgeport.ProgramError, match="save takes the path of a .edgeport file, got NoneType"):
        program.save(None)


def test_save_interrupted_midway_leaves_nothing(tmp_path, monkeypatch):
    """Ctrl-C during an LLM export's save left a 540 MB OUT.partial behind."""
    import zipfile

    program = edgeport.export(_Difference(), (torch.ones(2), torch.zeros(2)), ["cpu"])
    writes = []

    def interrupted(archive, info, data):
        writes.append(info)
        if len(writes) == 3:  # the manifest and its digest are written: a file is under way
            raise KeyboardInterrupt

    monkeypatch.setattr(zipfile.ZipFile, "writestr", interrupted)
    with pytest.raises(KeyboardInterrupt):
        program.save(tmp_path / "m.edgeport")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("methods", "message"), [
    ([torch.nn.ReLU()], "non-empty dict"), ({}, "non-empty dict"), ({"f": torch.nn.ReLU()}, "must be \\(module"),
    ({"f": (torch.nn.ReLU(),)}, "must be \\(module"),
    ({"a/../b": (torch.nn.ReLU(), (torch.ones(2),))}, "method name 'a/../b' is not one a program can hold"),
])
def test_a_method_table_export_methods_cannot_export_is_an_input_error(methods, message):
    """They raised AttributeError or TypeError, or ('a/../b') saved a file load refuses."""
    with pytest.raises(edgeport.InputError, match=message):
        edgeport.export_methods(methods, ["cpu"])


def test_options_that_are_no_dict_of_dicts_and_a_load_of_no_path_are_one_error():
    with pytest.raises(edgeport.BackendError, match="options are a dict of backend name"):
        edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["cpu"], options={"cpu": 2})
    for path in (3, b"PK\x03\x04 the file's bytes"):
        with pytest.raises(edgeport.ProgramError, match="load takes the path of a .edgeport file"):
            edgeport.load(path)


def test_a_meta_tensor_input_and_a_group_size_that_is_no_number_are_one_error():
    """NotImplementedError from torch, and TypeError comparing '64' with 0."""
    from edgeport.quantize import resolve_scheme

    program = edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["cpu"])
    with pytest.raises(edgeport.InputError, match="meta device"):
        program(torch.ones(2, device="meta"))
    with pytest.raises(edgeport.EdgeportError, match="group size must be a positive whole number, got '64'"):
        resolve_scheme("int4-weight", group_size="64")


def test_a_registry_that_is_no_registry_is_an_input_error(tmp_path):
    """export(registry="cpu") raised AttributeError: 'str' object has no attribute 'entry'."""
    with pytest.raises(edgeport.InputError, match="registry= takes an edgeport Registry"):
        edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["cpu"], registry="cpu")
    edgeport.export(torch.nn.ReLU(), (torch.ones(2),), ["cpu"]).save(tmp_path / "m.edgeport")
    with pytest.raises(edgeport.InputError, match="registry= takes an edgeport Registry"):
        edgeport.load(tmp_path / "m.edgeport", registry="cpu")


@dataclasses.dataclass(frozen=True)
class _ListOptions:
    layers: list[int] = dataclasses.field(default_factory=list)
    names: "tuple[str, ...]" = ()
    scales: tuple[float, ...] | None = None


class _ListBackend:
    name, options = "lists", _ListOptions


@pytest.mark.parametrize(("values", "expected"), [
    ({"layers": "1, 2,3", "names": "a,b"}, _ListOptions([1, 2, 3], ("a", "b"))),  # the command line's text
    ({"layers": "", "scales": "none"}, _ListOptions([], (), None)),
    ({"layers": (4,), "scales": [0.5, 1]}, _ListOptions([4], (), (0.5, 1))),  # Python values, and a manifest's lists
])
def test_list_and_tuple_options_convert_each_element(values, expected):
    """They got the text as given: layers="1,2,3", a string."""
    from edgeport.backend import options_from_dict, options_to_dict

    options = options_from_dict(_ListBackend(), values)
    assert options == expected
    assert options_from_dict(_ListBackend(), json.loads(json.dumps(options_to_dict(options)))) == options


@pytest.mark.parametrize(("values", "message"), [
    ({"layers": "1,x"}, "lists.layers expects a list of int (comma-separated text, or a list or tuple), got '1,x': "
                        "element 2 is 'x'"),
    ({"layers": 3}, "lists.layers expects a list of int (comma-separated text, or a list or tuple), got 3"),
    ({"names": "a,,b"}, "got 'a,,b': element 2 is empty"),  # was ('a', '', 'b')
    ({"layers": "1,2,"}, "got '1,2,': element 3 is empty"),
    ({"scales": [1.0, float("inf")]}, "element 2 is inf"),
])
def test_a_bad_element_of_a_list_option_is_refused(values, message):
    from edgeport.backend import options_from_dict

    with pytest.raises(edgeport.BackendError, match=re.escape(message)):
        options_from_dict(_ListBackend(), values)
