"""The pytest plugin (``pytest --edgeport-backend NAME``), run as a user runs it: pytest in
a fresh process, finding the plugin through its installed ``pytest11`` entry point."""

import os

import pytest

pytest_plugins = ["pytester"]

TESTS = os.path.dirname(__file__)

# The backend under test, registered in the process-wide registry as an installed
# plugin's would be (in the child process only).
CONFTEST = """
import edgeport
from numpy_backend import {backend}

class Plugin:
    @edgeport.hookimpl
    def edgeport_register_backends(self, register):
        register({backend}(name="numpy_ops", fail_compile={fail_compile}))

edgeport.default_registry().add_plugin(Plugin(), name="numpy-ops-plugin")
"""


@pytest.fixture
def child(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.setenv("COLUMNS", "300")  # summary lines whole

    def run(*args, fail_compile=False, backend="NumpyOpsBackend"):
        pytester.makeconftest(CONFTEST.format(fail_compile=fail_compile, backend=backend))
        pytester.makepyfile(test_own="def test_own():\n    pass\n")
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-ra", *args)

    return run


@pytest.mark.slow
def test_each_case_passes_is_skipped_with_its_reason_or_fails_with_its_verdict(child):
    result = child("--edgeport-backend", "numpy-ops", "--edgeport-option", "scale=1.01", "-v",
                   "-k", "own or add_broadcast or cumsum or int8_mul")
    # the project's own test runs too; add_broadcast is taken but wrong at scale 1.01,
    # cumsum is declined, int8_mul needs a scheme numpy_ops does not offer
    result.assert_outcomes(passed=1, failed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "add_broadcast * float32 * failed * 100%  0.01 / 0.0001 relative",  # -v: the table's row
        "cumsum * float32 * declined * 0%  -",
        "numpy-ops: 0 passed (0 taken whole), 2 declined, 0 not run here, 1 failed*",
        "*SKIPPED*cumsum: declined: aten.cumsum.default: numpy_ops has no kernel for aten.cumsum.default",
        "*SKIPPED*int8_mul: numpy_ops does not offer the int8 scheme (it offers: none)",
        "FAILED edgeport-conformance[[]numpy_ops[]]::add_broadcast - "
        "numpy_ops add_broadcast (float32): error 0.01 relative > tolerance 0.0001",
    ])


@pytest.mark.slow
def test_a_supported_case_that_fails_to_compile_fails(child):
    result = child("--edgeport-backend", "numpy_ops", "-k", "add_broadcast", fail_compile=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["FAILED *::add_broadcast - *fell back to portable*planted compile failure*"])


@pytest.mark.slow
def test_a_run_that_declined_every_case_fails_the_session_saying_so(child):
    result = child("--edgeport-backend", "numpy_ops", "-k", "own or cumsum or int8_mul")
    result.assert_outcomes(passed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["numpy_ops: no case passed: numpy_ops declined 2 and failed 0 of 2, so this run "
                                 "shows nothing of it works*"])


@pytest.mark.slow
def test_a_run_side_that_needs_torch_fails_its_cases_naming_the_import(child):
    result = child("--edgeport-backend", "numpy_ops", "-k", "add_broadcast", backend="TorchToRun")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["FAILED *::add_broadcast - numpy_ops add_broadcast (float32): without torch (as on a "
                                 "device), run() needs torch: numpy_backend.py:* in run: import torch; *"])


@pytest.mark.slow
def test_a_case_that_hangs_fails_within_the_timeout_given_and_the_session_goes_on(child):
    result = child("--edgeport-backend", "numpy_ops", "--edgeport-timeout", "5", "-k",
                   "add_broadcast or relu and not relu6 and not leaky and not conv and not int8", backend="LoopsInRun")
    result.assert_outcomes(passed=1, failed=1)  # relu passes after add_broadcast's run() hung
    result.stdout.fnmatch_lines(["FAILED *::add_broadcast - numpy_ops add_broadcast (float32): *hung: numpy_ops did "
                                 "not finish it within the 5 s time limit*; if it is only slow, raise the limit with "
                                 "--edgeport-timeout SECONDS"])


def test_the_timeout_flags_help_gives_the_kits_default(pytester, monkeypatch):
    """The plugin says the default without importing edgeport (that imports torch)."""
    from edgeport.testing.time_limit import CASE_TIME_LIMIT

    monkeypatch.setenv("COLUMNS", "300")  # the help line whole
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--help")
    result.stdout.fnmatch_lines(["*--edgeport-timeout=SECONDS*", f"*and go on (default {CASE_TIME_LIMIT:g})"])


def test_a_timeout_that_is_no_positive_number_is_a_usage_error(child):
    result = child("--edgeport-backend", "numpy_ops", "--edgeport-timeout", "-1")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--edgeport-backend numpy_ops: the time limit of a case must be a number of seconds "
                                 "above 0, not '-1'*", "*hint: e.g. --edgeport-timeout 120 (the default)*"])


def test_an_unknown_backend_is_a_usage_error_listing_the_installed_ones(child):
    result = child("--edgeport-backend", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--edgeport-backend nope: unknown backend 'nope'; installed: *numpy_ops*"])


def test_without_the_flag_the_plugin_adds_nothing_and_never_imports_edgeport(pytester):
    pytester.makepyfile(test_own="import sys\n\ndef test_own():\n    assert 'edgeport' not in sys.modules\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_an_option_is_taken_as_key_or_backend_key_as_edgeport_conformance_takes_it(child):
    """``--edgeport-option numpy_ops.scale=1.0`` was refused ("has no option numpy_ops.scale")."""
    result = child("--edgeport-backend", "numpy_ops", "--edgeport-option", "numpy_ops.scale=1.0", "-k", "own")
    result.assert_outcomes(passed=1)
    result = child("--edgeport-backend", "numpy_ops", "--edgeport-option", "scale", "-k", "own")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*hint: write --edgeport-option KEY=VALUE or --edgeport-option BACKEND.KEY=VALUE*"])
