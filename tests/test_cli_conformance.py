"""``edgeport conformance NAME``: the kit as a coverage table, JSON and a web page."""

import json
import os
import re

from click.testing import CliRunner

from edgeport.cli import cli
from edgeport.testing.kit import kit_cases
from numpy_backend import LoopsInRun, LoopsListingChoices, NumpyOpsBackend, TorchToLoad
from torch_backend import TorchOpsBackend, registry_with

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "conformance.md")
CASES = "add_broadcast,cumsum,int8_mul"  # taken, declined, a scheme not offered


def invoke(*args, backend=None):
    registry = registry_with(backend or NumpyOpsBackend(name="numpy_ops"))
    return CliRunner().invoke(cli, ["conformance", *args], obj=registry)


def test_the_table_has_a_row_per_case_with_its_verdict_and_reason():
    result = invoke("numpy-ops", "--case", CASES)
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.startswith("│")}
    assert set(rows) == {"add_broadcast", "cumsum", "int8_mul"}
    assert "passed" in rows["add_broadcast"] and "100%" in rows["add_broadcast"]
    assert "declined" in rows["cumsum"] and "numpy_ops has no kernel for aten.cumsum.default" in rows["cumsum"]
    assert "does not offer the int8 scheme" in rows["int8_mul"]
    assert "3 cases, 1 passed (1 taken whole), 2 declined, 0 not run here, 0 failed" in result.output


def test_a_failing_case_fails_the_command_after_printing_the_json(tmp_path):
    page = tmp_path / "coverage.html"
    result = invoke("numpy_ops", "--case", CASES, "--option", "scale=1.01", "--json", "--html", str(page))
    assert result.exit_code == 1
    data = json.loads(result.stdout)  # stderr says that no case passed: the JSON stays JSON
    assert result.stderr == ("numpy_ops: no case passed: numpy_ops declined 2 and failed 1 of 3, so this run shows "
                             "nothing of it works (a plugin declining every node would pass it); its support() must "
                             "take what it runs\n")
    assert data["summary"] == {"cases": 3, "passed": 0, "taken_whole": 0, "declined": 2, "not_run": 0, "failed": 1}
    assert data["backend"]["options"] == {"scale": "1.01"}
    failed = data["cases"][0]
    assert (failed["case"], failed["verdict"], failed["unit"]) == ("add_broadcast", "failed", "relative")
    assert 0.009 < failed["error"] < 0.011 and failed["tolerance"] == 1e-4
    assert data["ops"]["aten.cumsum.default"] == {"delegated": [], "declined": {"cumsum": data["cases"][1]["declined"][
        "aten.cumsum.default"]}}
    text = page.read_text()
    assert text.count("<tr style=") == 3 and "edgeport conformance: numpy_ops" in text


def test_every_json_field_is_documented_and_every_documented_field_exists():
    data = json.loads(invoke("numpy_ops", "--case", "add_broadcast", "--json").output)
    emitted = {*data, *(f"backend.{k}" for k in data["backend"]), *(f"summary.{k}" for k in data["summary"]),
               *(f"cases[].{k}" for k in data["cases"][0]), *(f"ops.<op>.{k}" for k in data["ops"]["aten.add.Tensor"])}
    emitted -= {"backend", "summary", "cases", "ops"}
    with open(DOCS) as f:
        documented = set(re.findall(r"^\| `([^`]+)` \|", f.read(), re.MULTILINE)) - {"passed", "declined", "not-run",
                                                                                     "failed"}
    assert emitted == documented


def test_an_unknown_backend_or_a_bad_option_is_one_line_and_a_hint():
    unknown = invoke("nope")
    assert unknown.exit_code == 1 and "unknown backend 'nope'; installed: numpy_ops" in unknown.output
    bad = invoke("numpy_ops", "--option", "scale")
    assert bad.exit_code == 1 and "bad backend option 'scale'" in bad.output and "hint: write --option KEY=VALUE or --option BACKEND.KEY=VALUE" in bad.output


def test_an_option_may_name_its_backend_as_export_s_do():
    result = invoke("numpy_ops", "--case", "add_broadcast", "--option", "numpy_ops.scale=1.0")
    assert result.exit_code == 0, result.output


def test_case_words_that_match_no_case_fail_instead_of_passing_nothing():
    result = invoke("numpy_ops", "--case", "add_broadcsat")
    assert result.exit_code == 1 and "no conformance case name contains 'add_broadcsat'" in result.output
    assert "hint: case names: conv2d," in result.output


def test_a_case_word_is_matched_whole_between_underscores():
    """'add' picked every *_padding case as well."""
    from edgeport.cli.conformance import names_word

    picked = [c.name for c in kit_cases() if names_word(c.name, "add")]
    assert picked == ["add_broadcast", "int8_add", "int8_add_relu", "int8_stored_add"]
    assert names_word("max_pool2d_k2_s2_p1", "max_pool2d") and not names_word("avg_pool2d", "pool")


def test_a_run_that_declined_every_case_fails_saying_so():
    """A plugin whose support() declined every node got a green run."""
    result = invoke("numpy_ops", "--case", "cumsum,int8_mul")
    assert result.exit_code == 1
    assert "2 cases, 0 passed (0 taken whole), 2 declined, 0 not run here, 0 failed" in result.output
    assert result.output.endswith("numpy_ops: no case passed: numpy_ops declined 2 and failed 0 of 2, so this run "
                                  "shows nothing of it works (a plugin declining every node would pass it); its "
                                  "support() must take what it runs\n")


def test_a_backend_that_compiles_here_but_cannot_run_is_not_declining_everything():
    result = invoke("torch_ops", "--case", "add_broadcast,cumsum", backend=TorchOpsBackend("torch_ops", can_run=False))
    assert result.exit_code == 0, result.output
    assert "2 cases, 0 passed (0 taken whole), 1 declined, 1 not run here, 0 failed" in result.output


def test_a_run_side_that_needs_torch_fails_the_command_naming_the_import():
    result = invoke("numpy_ops", "--case", "add_broadcast", "--json", backend=TorchToLoad("numpy_ops"))
    assert result.exit_code == 1
    [case] = json.loads(result.stdout)["cases"]
    assert case["verdict"] == "failed"
    assert case["message"].startswith("without torch (as on a device), load() needs torch: numpy_backend.py:")


def test_a_case_the_backend_declines_whole_logs_no_export_warning(caplog):
    """Export's warning that a backend took no node came once per declined case: 88 lines
    before the template backend's table."""
    result = invoke("numpy_ops", "--case", "add_broadcast,cumsum")
    assert result.exit_code == 0, result.output
    assert "took none" not in caplog.text and "took none" not in result.output


def test_a_case_that_hangs_fails_within_the_timeout_given_and_says_how_to_raise_it():
    result = invoke("numpy_ops", "--case", "add_broadcast", "--timeout", "3", "--json", backend=LoopsInRun("numpy_ops"))
    assert result.exit_code == 1
    [case] = json.loads(result.stdout)["cases"]
    assert case["verdict"] == "failed"
    assert re.search(r"hung: numpy_ops did not finish it within the 3 s time limit.*; if it is only slow, raise the "
                     r"limit with --timeout SECONDS$", case["message"]), case["message"]


def test_an_options_check_that_hangs_is_one_line_before_any_case_runs():
    result = invoke("numpy_ops", "--case", "add_broadcast", "--timeout", "3", backend=LoopsListingChoices("numpy_ops"))
    assert result.exit_code == 1
    assert re.search(r"its options check hung: numpy_ops did not finish it within the 3 s time limit \(at "
                     r"numpy_backend.py:\d+ in _devices_forever\)", result.output), result.output
    assert "case 1/1" not in result.output and "Traceback" not in result.output


def test_a_timeout_that_is_no_positive_number_is_one_line_and_a_hint():
    result = invoke("numpy_ops", "--case", "add_broadcast", "--timeout", "0")
    assert result.exit_code == 1
    assert "the time limit of a case must be a number of seconds above 0, not 0.0" in result.output
    assert "e.g. --timeout 120 (the default)" in result.output
