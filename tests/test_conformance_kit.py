"""The conformance kit's verdicts (edgeport.testing.kit), on the test backend: each rule
of a verdict planted once."""

import dataclasses
import re
import time
import types

import numpy as np
import pytest
import torch

import edgeport

from edgeport import BackendError, InputError
from edgeport.testing import CASES, QUANTIZED_CASES
from edgeport.testing.kit import (Verdict, backend_named, checked_options, kit_cases, parse_option_items, run_kit,
                                  run_kit_case)
from numpy_backend import (RELEASE, BlocksInCompile, BlocksWithoutTorch, LoopsInRun, LoopsInVersion, NumpyOpsBackend,
                           OffWithoutTorch, TorchToLoad, TorchToRun)
from torch_backend import TorchOpsBackend, registry_with

CASE = {c.name: c for c in kit_cases()}


def test_the_kit_runs_every_float_and_quantized_case_once():
    assert [c.name for c in kit_cases()] == [c.name for c in (*CASES, *QUANTIZED_CASES)]
    assert len(CASE) == len(CASES) + len(QUANTIZED_CASES)


def test_a_case_taken_whole_and_right_passes():
    outcome = run_kit_case(TorchOpsBackend(), CASE["relu"])
    assert (outcome.verdict, outcome.delegated, outcome.declined) == (Verdict.PASSED, 1.0, {})
    assert outcome.delegated_ops == ("aten.relu.default",)
    assert outcome.error < 1e-6 and outcome.tolerance == 1e-4 and outcome.dtype == "float32"


def test_a_case_taken_in_part_passes_and_keeps_the_reason_for_the_rest():
    outcome = run_kit_case(TorchOpsBackend(ops=("relu",)), CASE["conv_bn_relu"])
    assert outcome.verdict is Verdict.PASSED and 0.0 < outcome.delegated < 1.0
    assert outcome.declined["aten.convolution.default"] == "torchops has no kernel for aten.convolution.default"


def test_a_case_the_backend_takes_nothing_of_is_declined_with_its_reasons():
    outcome = run_kit_case(TorchOpsBackend(), CASE["conv2d"])
    assert outcome.verdict is Verdict.DECLINED and outcome.delegated == 0.0
    assert "aten.convolution.default: torchops has no kernel" in outcome.message


def test_a_reason_that_names_its_op_is_not_prefixed_with_it_again():
    """The reason templates writing-a-backend.md shows begin "{op}: ", and the kit showed
    "aten.convolution.default: aten.convolution.default: input dtype ..."."""

    class NamesTheOp(TorchOpsBackend):
        def support(self, node, ctx):
            return edgeport.Support.no(f"{node.target}: no kernel here")

    outcome = run_kit_case(NamesTheOp(), CASE["conv2d"])
    assert outcome.message == "declined: aten.convolution.default: no kernel here"
    assert outcome.why == "aten.convolution.default: no kernel here"


def test_a_wrong_answer_fails_at_the_declared_tolerance_and_passes_at_a_looser_one():
    wrong = run_kit_case(TorchOpsBackend(), CASE["relu"], {"scale": 1.01})
    assert wrong.verdict is Verdict.FAILED and "> tolerance 0.0001" in wrong.message

    class Loose(TorchOpsBackend):
        def tolerance(self, options):
            return 0.02 if options.scale != 1.0 else super().tolerance(options)

    loose = run_kit_case(Loose(), CASE["relu"], {"scale": 1.01})
    assert loose.verdict is Verdict.PASSED and loose.tolerance == 0.02


def test_a_supported_node_that_fails_to_compile_is_a_failure_not_a_decline():
    outcome = run_kit_case(TorchOpsBackend(fail_compile=True), CASE["relu"])
    assert outcome.verdict is Verdict.FAILED
    assert "fell back to portable" in outcome.message and "planted compile failure" in outcome.message


def test_nodes_refused_at_compile_with_decline_nodes_are_declines():
    outcome = run_kit_case(TorchOpsBackend(decline_on_compile=("relu",)), CASE["relu"])
    assert outcome.verdict is Verdict.DECLINED
    assert outcome.declined == {"aten.relu.default": "refused at compile time"}


def test_a_case_that_compiles_but_cannot_run_here_is_not_run():
    outcome = run_kit_case(TorchOpsBackend(can_run=False), CASE["relu"])
    assert outcome.verdict is Verdict.NOT_RUN and outcome.error is None
    assert outcome.message == "compiled; not run: the test says it cannot run here"


def test_a_quantized_case_of_a_scheme_the_backend_does_not_offer_is_declined():
    outcome = run_kit_case(TorchOpsBackend(), CASE["int8_conv2d"])
    assert outcome.verdict is Verdict.DECLINED and outcome.family == "quantized" and outcome.dtype == "int8"
    assert outcome.message == "torchops does not offer the int8 scheme (it offers: none)"


def test_a_run_reports_its_backend_and_checks_options_first():
    run = run_kit(NumpyOpsBackend(), {"scale": "1.0"}, cases=[CASE["relu"], CASE["conv2d"]])
    assert (run.backend, run.options, run.availability.can_run) == ("numpyops", {"scale": "1.0"}, True)
    assert [run.count(v) for v in (Verdict.PASSED, Verdict.DECLINED, Verdict.FAILED)] == [1, 1, 0]
    with pytest.raises(BackendError, match="has no option nope"):
        run_kit(TorchOpsBackend(), {"nope": 1}, cases=[CASE["relu"]])


def test_backends_are_found_by_name_or_alias_and_dashes_read_as_underscores():
    registry = registry_with(TorchOpsBackend(name="torch_ops"))
    assert backend_named("torch-ops", registry).name == "torch_ops"
    assert backend_named("torch_ops", registry).name == "torch_ops"


def test_a_backend_that_cannot_compile_here_runs_no_case_and_says_why():
    class NoSdk(TorchOpsBackend):
        def availability(self):
            raise OSError("libnpu.so not found")

    outcome = run_kit_case(NoSdk(), CASE["relu"])
    assert (outcome.verdict, outcome.dtype) == (Verdict.NOT_RUN, "float32")
    assert outcome.message == "not compiled: torchops cannot compile here: availability() raised OSError: libnpu.so not found"


@pytest.mark.parametrize("case, unit, tolerance", [("int8_add", "steps", 1.0), ("int8_dynamic_linear", "relative", 1e-5)])
def test_quantized_cases_run_where_the_backend_offers_the_scheme(case, unit, tolerance):
    """Judged against the fake-quantized reference: int8 in output steps, dynamic relatively."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("torchao")
    from edgeport.backends.cpu import CpuBackend

    outcome = run_kit_case(CpuBackend(), CASE[case])
    assert (outcome.verdict, outcome.family, outcome.delegated) == (Verdict.PASSED, "quantized", 1.0), outcome.message
    assert (outcome.unit, outcome.tolerance) == (unit, tolerance) and outcome.error <= tolerance


@pytest.mark.parametrize("declared", ["1e-2", None, -1.0, float("nan")])
def test_a_tolerance_that_is_no_number_fails_its_case_and_the_run_goes_on(declared):
    """A string aborted the whole run with a TypeError comparing it with a float."""
    class Loose(TorchOpsBackend):
        def tolerance(self, options):
            return declared

    relu = next(c for c in CASES if c.name == "relu")
    outcome = run_kit_case(Loose(ops=("relu",)), relu)
    assert outcome.verdict == Verdict.FAILED and f"tolerance() returned {declared!r}" in outcome.message


def test_a_tolerance_that_raises_fails_its_case_and_the_run_goes_on():
    """It ended the whole run as an "internal error"."""
    class Raises(TorchOpsBackend):
        def tolerance(self, options):
            raise RuntimeError("no table")

    run = run_kit(Raises(ops=("relu",)), cases=[CASE["relu"], CASE["int8_relu"]])
    assert [o.verdict for o in run.outcomes] == [Verdict.FAILED, Verdict.DECLINED]
    assert run.outcomes[0].message.startswith("tolerance() raised RuntimeError: no table")


@pytest.mark.parametrize("declared", [1.0, float("inf")])
def test_a_tolerance_that_passes_an_answer_of_zeros_fails_its_case(declared):
    """A scratch plugin returning zeros from every run passed every float case it took
    once it declared tolerance() 1.0: max |0 - eager| / max |eager| is exactly 1."""
    class Zeros(TorchOpsBackend):
        def tolerance(self, options):
            return declared

        def load(self, artifact):
            return types.SimpleNamespace(run=lambda inputs: [np.zeros_like(np.asarray(inputs[0]))])

    outcome = run_kit_case(Zeros(ops=("relu",)), CASE["relu"])
    assert outcome.verdict == Verdict.FAILED
    assert outcome.message.startswith(f"tolerance() returned {declared!r}: an answer of all zeros is off by 1")


def test_a_compile_that_writes_into_the_weights_fails_saying_so_not_as_a_wrong_answer():
    """Its artifact was right and eager, over the zeroed weights, was wrong: the case
    failed as "error 0.12 relative > tolerance", blaming the backend's right answer."""
    class ZeroesWeights(TorchOpsBackend):
        def compile(self, program, options):
            artifact = super().compile(program, options)
            with torch.no_grad():
                for value in program.state_dict.values():
                    value.zero_()
            return artifact

    outcome = run_kit_case(ZeroesWeights(ops=("convolution", "relu")), CASE["conv2d"])
    assert outcome.verdict == Verdict.FAILED
    assert outcome.message.startswith("export changed the model's weights (w, b): the program a backend is "
                                      "given shares them"), outcome.message
    assert run_kit_case(TorchOpsBackend(ops=("convolution", "relu")), CASE["conv2d"]).verdict == Verdict.PASSED


class _SupportRaises(TorchOpsBackend):
    def support(self, node, ctx):
        raise RuntimeError("planted support failure")


class _PrepareRaises(TorchOpsBackend):
    def prepare(self, program, options):
        raise KeyError("plan")


@pytest.mark.parametrize("backend, error", [(_SupportRaises(), "support() raised RuntimeError: planted support failure"),
                                            (_PrepareRaises(), "prepare() raised KeyError: 'plan'")])
def test_a_support_check_that_raises_fails_the_case_instead_of_declining_it(backend, error):
    """A backend raising on every node used to pass the kit: every case "declined"."""
    outcome = run_kit_case(backend, CASE["relu"])
    assert outcome.verdict is Verdict.FAILED and outcome.error is None
    assert outcome.message.startswith(error) and "never raise" in outcome.message


class _LoadsOnlyBytes(TorchOpsBackend):
    def load(self, artifact):
        artifact.data.decode  # noqa: B018 - bytes have it; the memoryview of a saved program has not
        return super().load(artifact)


def test_the_kit_loads_each_case_from_a_saved_program_as_users_do():
    """In memory, load() got the bytes compile() returned; a saved program hands it a memoryview."""
    outcome = run_kit_case(_LoadsOnlyBytes(), CASE["relu"])
    assert outcome.verdict is Verdict.FAILED
    assert outcome.message.startswith("load of the saved program failed: backend 'torchops' cannot load partition 0: "
                                      "AttributeError") and "edgeport.as_bytes" in outcome.message


class _TorchOnly:
    def __init__(self, inner):
        self.inner = inner

    def run(self, inputs):
        return self.inner.run([x.detach() for x in inputs])  # numpy arrays have no detach()


class _AssumesTorch(TorchOpsBackend):
    def load(self, artifact):
        return _TorchOnly(super().load(artifact))


def test_the_kit_also_runs_each_case_on_numpy_inputs_as_edgeport_run_does():
    outcome = run_kit_case(_AssumesTorch(), CASE["relu"])
    assert outcome.verdict is Verdict.FAILED
    assert outcome.message.startswith("the run on numpy inputs failed: step 0 (torchops) failed: AttributeError")
    assert "edgeport.as_numpy" in outcome.message
    assert run_kit_case(TorchOpsBackend(), CASE["relu"]).verdict is Verdict.PASSED  # the same on tensors is right


@pytest.mark.parametrize("returned, said", [
    ({"suffix": "/../../escaped.zip"}, "suffix '/../../escaped.zip' is no file extension"),
    ({"metadata": {"nodes": np.int64(1)}}, "Artifact.metadata that is not JSON (Object of type int64"),
    ({"metadata": {"scale": float("nan")}}, "Artifact.metadata that is not JSON (Out of range float"),
])
def test_an_artifact_no_program_can_hold_is_refused_at_export_naming_the_backend(returned, said, caplog):
    """Each exported fine and failed later: at save (metadata) or at load (a suffix that is a path)."""
    class Careless(TorchOpsBackend):
        def compile(self, program, options):
            return dataclasses.replace(super().compile(program, options), **returned)

    with caplog.at_level("WARNING", logger="edgeport.lowering"):
        outcome = run_kit_case(Careless(), CASE["relu"])
    assert outcome.verdict is Verdict.FAILED and said in outcome.message
    assert [r.getMessage() for r in caplog.records if said in r.getMessage()][0].startswith(
        "partition 0 on torchops falls back to portable: compile failed: TypeError: compile() returned")


@dataclasses.dataclass(frozen=True)
class _RuledOptions:
    precision: str = edgeport.option("fp32", choices=("fp32", "fp16"))


class _Ruled(TorchOpsBackend):
    options = _RuledOptions


def test_options_are_key_or_backend_key_and_a_bad_one_is_hinted_with_the_flag_it_came_with():
    """pytest's hint said `--option ...`, the CLI's flag, where pytest takes `--edgeport-option`."""
    assert parse_option_items(_Ruled(), ["torchops.precision=FP16"]) == {"precision": "FP16"}
    assert parse_option_items(_Ruled(), ["precision=fp16"]) == {"precision": "fp16"}
    with pytest.raises(BackendError, match="option torchops.precision='fp64' is not one of: fp32, fp16") as raised:
        checked_options(_Ruled(), {"precision": "fp64"}, flag="--edgeport-option")
    assert "set it with --edgeport-option torchops.precision=VALUE" in raised.value.hint


def test_a_failed_case_taken_in_part_shows_its_failure_not_its_declines_as_why():
    """The table's why column showed the reasons for the nodes left to portable instead."""
    outcome = run_kit_case(TorchOpsBackend(ops=("relu",)), CASE["conv_bn_relu"], {"scale": 1.01})
    assert outcome.verdict is Verdict.FAILED and outcome.declined and 0.0 < outcome.delegated < 1.0
    assert outcome.why == outcome.message and "> tolerance" in outcome.why
    passed = run_kit_case(TorchOpsBackend(ops=("relu",)), CASE["conv_bn_relu"])
    assert passed.why.startswith("aten.convolution.default: torchops has no kernel")


class _Bends:
    def __init__(self, inner, bend):
        self.inner, self.bend = inner, bend

    def run(self, inputs):
        return [self.bend(o) for o in self.inner.run(inputs)]


@pytest.mark.parametrize("bend, said", [
    # the runtime checks a delegate's outputs against its partition's, and names the step
    (lambda o: o.double(), r".*step 0 \(torchops\) returned output 0 \(relu\) as float64 \[2, 16\]; "
                           r"its partition computes float32 \[2, 16\].*"),
    (lambda o: o[None], r".*returned output 0 \(relu\) as float32 \[1, 2, 16\]; its partition computes float32 "
                        r"\[2, 16\].*"),
    (lambda o: o.index_fill(0, torch.tensor([1]), float("nan")), r"output 0 is nan at \[1, 0\], eager's [0-9.e-]+"),
])
def test_an_output_of_the_wrong_dtype_or_shape_or_a_misplaced_nan_is_named(bend, said):
    """It said "wrong output dtype or shape, or a NaN or infinity": which, the author had to find out."""
    class Bent(TorchOpsBackend):
        def load(self, artifact):
            return _Bends(super().load(artifact), bend)

    outcome = run_kit_case(Bent(), CASE["relu"])
    assert outcome.verdict is Verdict.FAILED
    assert re.fullmatch(said, outcome.message), outcome.message


def test_a_stateful_case_run_on_numpy_inputs_starts_from_the_state_eager_started_from():
    """The numpy program is loaded afresh: compared with the eager module after the tensor
    runs had written its buffer, a right backend failed (error 0.93)."""
    outcome = run_kit_case(TorchOpsBackend(ops=("index_copy", "permute", "bmm")), CASE["buffer_row_update"])
    assert (outcome.verdict, outcome.delegated) == (Verdict.PASSED, 1.0), outcome.message


# -- the run side without torch -------------------------------------------------------------


def test_a_backend_whose_run_side_needs_no_torch_passes_without_torch_too():
    run = run_kit(NumpyOpsBackend(), cases=[CASE["relu"], CASE["add_broadcast"]])
    assert [o.verdict for o in run.outcomes] == [Verdict.PASSED, Verdict.PASSED], run.outcomes


@pytest.mark.parametrize("backend, stage, line", [
    (TorchToLoad(), "load()", "in load: import torch  # noqa: F401 - the planted run-side import"),
    (TorchToRun(), "run()", "in run: import torch"),
])
def test_a_run_side_that_imports_torch_fails_naming_the_import(backend, stage, line):
    """Such a plugin passed every case (it runs where torch is) and failed on a board."""
    outcome = run_kit(backend, cases=[CASE["relu"]]).outcomes[0]
    assert outcome.verdict is Verdict.FAILED
    assert re.match(rf"without torch \(as on a device\), {re.escape(stage)} needs torch: numpy_backend.py:\d+ "
                    rf"{re.escape(line)}; the run side .* must need only numpy and your runtime", outcome.message), \
        outcome.message


def test_a_module_that_imports_torch_at_the_top_fails_naming_that_line():
    outcome = run_kit(TorchOpsBackend(), cases=[CASE["relu"]]).outcomes[0]
    assert outcome.verdict is Verdict.FAILED
    assert outcome.message.startswith("without torch (as on a device), importing the backend's module needs torch: "
                                      "torch_backend.py:14 in <module>: import torch")


def test_a_backend_the_process_without_torch_cannot_get_fails_saying_how_to_make_it_checkable():
    """Neither installed nor picklable (a class defined in a function): the kit cannot
    check its run side, and says what would let it."""
    class Local(NumpyOpsBackend):
        pass

    outcome = run_kit(Local(), cases=[CASE["relu"]]).outcomes[0]
    assert outcome.verdict is Verdict.FAILED
    assert outcome.message.startswith("without torch (as on a device), importing the backend's module failed: "
                                      "LookupError: numpyops is not an installed plugin here, and the kit cannot "
                                      "hand its backend object to another process (pickle: ")
    assert outcome.message.endswith("install the plugin, or define its class at the top level of an importable module")


def test_an_answer_that_differs_without_torch_is_judged_like_any():
    outcome = run_kit(OffWithoutTorch(), cases=[CASE["relu"]]).outcomes[0]
    assert outcome.verdict is Verdict.FAILED and outcome.message == "error 1 relative > tolerance 0.0001"


def test_one_process_without_torch_serves_the_whole_run_and_none_starts_when_nothing_runs(monkeypatch):
    """A process a case cost seconds per case; a backend that runs nothing here needs none."""
    import subprocess

    from edgeport.testing import without_torch

    started, popen = [], subprocess.Popen
    monkeypatch.setattr(without_torch.subprocess, "Popen", lambda *a, **k: started.append(a) or popen(*a, **k))
    run = run_kit(NumpyOpsBackend(), cases=[CASE["relu"], CASE["add_broadcast"], CASE["conv2d"]])
    assert [o.verdict for o in run.outcomes] == [Verdict.PASSED, Verdict.PASSED, Verdict.DECLINED]
    assert len(started) == 1
    run_kit(TorchOpsBackend(can_run=False), cases=[CASE["relu"]])
    assert len(started) == 1


def test_a_program_with_torch_steps_is_not_run_without_torch():
    """conv_bn_relu leaves the conv to portable torch: the device would need torch for it anyway."""
    outcome = run_kit(TorchOpsBackend(ops=("relu",)), cases=[CASE["conv_bn_relu"]]).outcomes[0]
    assert outcome.verdict is Verdict.PASSED and 0 < outcome.delegated < 1


# -- a run that shows nothing works ----------------------------------------------------------------


def test_a_run_that_declined_everything_proves_nothing_and_says_so():
    run = run_kit(NumpyOpsBackend(), cases=[CASE["conv2d"], CASE["cumsum"], CASE["int8_add"]])
    assert [run.count(v) for v in Verdict] == [0, 3, 0, 0]
    assert run.proves_nothing == ("no case passed: numpyops declined 3 and failed 0 of 3, so this run shows nothing "
                                  "of it works (a plugin declining every node would pass it); its support() must "
                                  "take what it runs")


def test_a_run_with_a_pass_or_a_case_it_cannot_run_here_proves_something():
    assert run_kit(NumpyOpsBackend(), cases=[CASE["conv2d"], CASE["relu"]]).proves_nothing == ""
    assert run_kit(TorchOpsBackend(can_run=False), cases=[CASE["conv2d"], CASE["relu"]]).proves_nothing == ""


# -- a case that hangs ----------------------------------------------------------------------
# A tight limit for the case that hangs; the cases around it keep the default, so a busy
# machine cannot fail them. Each test first runs a case that passes: the process's first
# export is slow, and the case that hangs must reach the step it hangs in within the limit.

HANG_LIMIT = 3.0


def test_a_run_that_hangs_in_a_python_loop_fails_its_case_and_the_backend_goes_on():
    backend = LoopsInRun()
    assert run_kit_case(backend, CASE["relu"]).verdict is Verdict.PASSED
    outcome = run_kit_case(backend, CASE["add_broadcast"], time_limit=HANG_LIMIT)
    assert outcome.verdict is Verdict.FAILED
    assert re.fullmatch(r"run\(\) hung: numpyops did not finish it within the 3 s time limit \(at numpy_backend.py:"
                        r"\d+ in run\); if it is only slow, raise the limit with --timeout SECONDS",
                        outcome.message), outcome.message
    assert run_kit_case(backend, CASE["relu"]).verdict is Verdict.PASSED  # the loop was stopped: it goes on


def test_a_compile_blocked_for_good_fails_its_case_and_the_backends_later_cases_at_once():
    """Blocked on a lock, the thread cannot be stopped: its backend's other cases would
    block on the same, each costing the whole limit."""
    backend = BlocksInCompile()
    try:
        assert run_kit_case(backend, CASE["relu"]).verdict is Verdict.PASSED
        outcome = run_kit_case(backend, CASE["add_broadcast"], time_limit=HANG_LIMIT, timeout_flag="--edgeport-timeout")
        assert outcome.verdict is Verdict.FAILED
        assert re.fullmatch(r"compile\(\) hung: numpyops did not finish it within the 3 s time limit \(at "
                            r"numpy_backend.py:\d+ in compile\); if it is only slow, raise the limit with "
                            r"--edgeport-timeout SECONDS; the call cannot be stopped \(Python cannot kill a thread; "
                            r"it stays blocked, holding what it held\), so numpyops's remaining cases are not run",
                            outcome.message), outcome.message
        started = time.monotonic()
        later = run_kit_case(backend, CASE["relu"], time_limit=HANG_LIMIT)
        assert time.monotonic() - started < HANG_LIMIT
        assert later.verdict is Verdict.FAILED
        assert later.message == ("not run: numpyops's compile() hung on case add_broadcast and is still blocked "
                                 "(Python cannot kill a thread); fix the hang, or raise the limit with --timeout "
                                 "SECONDS if it is only slow")
        assert run_kit_case(NumpyOpsBackend(), CASE["relu"]).verdict is Verdict.PASSED  # other backends go on
    finally:
        RELEASE.set()


def test_a_run_that_hangs_without_torch_has_its_process_killed_and_the_next_case_starts_another(monkeypatch):
    import subprocess

    from edgeport.testing import without_torch

    started, popen = [], subprocess.Popen
    monkeypatch.setattr(without_torch.subprocess, "Popen",
                        lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    backend = BlocksWithoutTorch()
    with without_torch.TorchFreeRuns() as runs:
        assert run_kit_case(backend, CASE["relu"], without_torch=runs).verdict is Verdict.PASSED
        outcome = run_kit_case(backend, CASE["add_broadcast"], without_torch=runs, time_limit=HANG_LIMIT)
        assert outcome.verdict is Verdict.FAILED
        assert outcome.message == ("run() without torch hung: numpyops did not finish it within the 3 s time limit; "
                                   "if it is only slow, raise the limit with --timeout SECONDS"), outcome.message
        assert started[0].poll() is not None  # killed
        assert run_kit_case(backend, CASE["relu"], without_torch=runs).verdict is Verdict.PASSED
        assert len(started) == 2


def test_a_version_that_hangs_fails_the_run_before_any_case_naming_the_step():
    with pytest.raises(BackendError) as raised:
        run_kit(LoopsInVersion(), cases=[CASE["relu"]], time_limit=HANG_LIMIT, timeout_flag="--edgeport-timeout")
    assert re.fullmatch(r"reading its version hung: numpyops did not finish it within the 3 s time limit \(at "
                        r"numpy_backend.py:\d+ in version\); if it is only slow, raise the limit with "
                        r"--edgeport-timeout SECONDS", str(raised.value)), str(raised.value)


@pytest.mark.parametrize("limit", [0, -1, float("nan"), float("inf"), "soon"])
def test_a_time_limit_that_is_no_positive_number_is_refused_before_any_case_runs(limit):
    with pytest.raises(InputError, match=r"the time limit of a case must be a number of seconds above 0, not "):
        run_kit(NumpyOpsBackend(), cases=[CASE["relu"]], time_limit=limit)
