"""edgeport's pytest plugin: ``pytest --edgeport-backend NAME`` runs the conformance kit.

Installed with edgeport (entry point ``pytest11``). With the flag, every case of the kit
(`edgeport.testing.kit`) becomes one test item of the run, judged on the installed
backend NAME: a case it passes passes, a case it fails (export, compile, run, run
without torch, or an answer off by more than its declared tolerance) fails with that
one line, and a case it declines, or that cannot run on this machine, is skipped with
the reason. A run in which no case passed and none is not-run (the backend declined
everything) fails the session, saying so in the summary.
``--edgeport-option KEY=VALUE`` (or ``BACKEND.KEY=VALUE``, as ``edgeport conformance
--option`` takes it) sets a backend option (repeatable). ``--edgeport-timeout SECONDS``
sets each case's time limit (``edgeport conformance --timeout``): a case whose compile(),
load() or run() hangs past it fails, naming the step, and the session goes on.

Without the flag the plugin adds nothing. It lives outside the ``edgeport`` package
and imports edgeport only when the flag is given, so it costs every other pytest run
in the environment nothing (``import edgeport`` imports torch).
"""

from __future__ import annotations

from typing import Any

import pytest

BACKEND_FLAG = "--edgeport-backend"
OPTION_FLAG = "--edgeport-option"
TIMEOUT_FLAG = "--edgeport-timeout"
_OUTCOMES = pytest.StashKey[list]()
_WITHOUT_TORCH = pytest.StashKey[Any]()  # the session's one process without torch (edgeport.testing.without_torch)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("edgeport", "edgeport conformance kit")
    group.addoption(BACKEND_FLAG, metavar="NAME", default=None,
                    help="run edgeport's conformance kit on the installed backend NAME")
    group.addoption(OPTION_FLAG, metavar="KEY=VALUE", action="append", default=[],
                    help="an option of that backend, for every case (repeatable; BACKEND.KEY=VALUE too)")
    group.addoption(TIMEOUT_FLAG, metavar="SECONDS", default=None,
                    help="fail a case of the kit whose compile(), load() or run() has not finished after this "
                         "long, and go on (default 120)")  # CASE_TIME_LIMIT: importing it would import torch


@pytest.hookimpl(tryfirst=True)  # before -k and -m deselect: they apply to the kit's items too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    name = config.getoption(BACKEND_FLAG)
    if name is None:
        return
    from edgeport import EdgeportError
    from edgeport.testing.kit import backend_named, checked_backend, parse_option_items
    from edgeport.testing.time_limit import CASE_TIME_LIMIT, checked_time_limit

    try:
        given = config.getoption(TIMEOUT_FLAG)
        time_limit = CASE_TIME_LIMIT if given is None else checked_time_limit(given, flag=TIMEOUT_FLAG)
        backend = backend_named(name)
        options = parse_option_items(backend, config.getoption(OPTION_FLAG), flag=OPTION_FLAG)
        checked_backend(backend, options, time_limit, flag=OPTION_FLAG, timeout_flag=TIMEOUT_FLAG)
    except EdgeportError as exc:
        raise pytest.UsageError(f"{BACKEND_FLAG} {name}: {exc}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))
    from edgeport.testing.without_torch import TorchFreeRuns

    config.stash[_OUTCOMES] = []
    config.stash[_WITHOUT_TORCH] = TorchFreeRuns()
    suite_name = f"edgeport-conformance[{backend.name}]"
    suite = KitSuite.from_parent(session, name=suite_name, nodeid=suite_name, backend=backend, options=options,
                                 time_limit=time_limit)
    report = suite.ihook.pytest_make_collect_report(collector=suite)  # as pytest collects any collector,
    suite.ihook.pytest_collectreport(report=report)  # so the run counts and reports the kit's items
    items.extend(report.result)


class KitSuite(pytest.Collector):
    """Every case of the kit on one backend; item ids read ``edgeport-conformance[NAME]::case``."""

    def __init__(self, *, backend: Any, options: dict[str, str], time_limit: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend, self.options, self.time_limit = backend, options, time_limit

    def collect(self) -> list[pytest.Item]:
        from edgeport.testing.kit import kit_cases

        return [KitCaseItem.from_parent(self, name=case.name, backend=self.backend, case=case, options=self.options,
                                        time_limit=self.time_limit)
                for case in kit_cases()]


class KitFailure(Exception):
    """A case the backend got wrong; reported as its verdict's one line, no traceback."""


class KitCaseItem(pytest.Item):
    """One case of the kit on the backend: passes, fails with its verdict, or skips with why."""

    def __init__(self, *, backend: Any, case: Any, options: dict[str, str], time_limit: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backend, self.case, self.options, self.time_limit = backend, case, options, time_limit

    def runtest(self) -> None:
        from edgeport.testing.kit import Verdict, run_kit_case

        outcome = run_kit_case(self.backend, self.case, self.options, self.config.stash[_WITHOUT_TORCH],
                               self.time_limit, timeout_flag=TIMEOUT_FLAG)
        self.config.stash[_OUTCOMES].append(outcome)
        self.user_properties.append(("edgeport_verdict", outcome.verdict.value))
        if outcome.declined:
            self.add_report_section("call", "declined", "\n".join(f"{op}: {why}" for op, why in outcome.declined.items()))
        if outcome.verdict in (Verdict.DECLINED, Verdict.NOT_RUN):
            pytest.skip(f"{self.case.name}: {outcome.message}")
        if outcome.verdict is Verdict.FAILED:
            raise KitFailure(f"{self.backend.name} {self.case.name} ({outcome.dtype}): {outcome.message}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, KitFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"edgeport conformance: {self.backend.name} {self.name}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The kit's process without torch ends with the session; a kit run in which no case
    passed and none is not-run (a plugin that declines everything) fails the session."""
    without_torch = session.config.stash.get(_WITHOUT_TORCH, None)
    if without_torch is not None:
        without_torch.close()
    outcomes = session.config.stash.get(_OUTCOMES, None)
    if outcomes and exitstatus == pytest.ExitCode.OK:
        from edgeport.testing.kit import nothing_passed

        if nothing_passed(session.config.getoption(BACKEND_FLAG), outcomes):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    outcomes = config.stash.get(_OUTCOMES, None)
    if not outcomes:
        return
    from edgeport.testing.kit import Verdict

    counts = {v: sum(o.verdict is v for o in outcomes) for v in Verdict}
    whole = sum(o.verdict is Verdict.PASSED and o.delegated == 1.0 for o in outcomes)
    name = config.getoption(BACKEND_FLAG)
    table = " ".join(["edgeport conformance", name, *(f"--option {o}" for o in config.getoption(OPTION_FLAG))])
    terminalreporter.write_sep("-", "edgeport conformance")
    if config.get_verbosity() > 0:  # -v: a line per case, as the table has it
        for o in outcomes:
            error = "-" if o.error is None else f"{o.error:.2g} / {o.tolerance:.2g} {o.unit}"
            terminalreporter.write_line(f"{o.case:42} {o.dtype:13} {o.verdict.value:9} {o.delegated:5.0%}  {error}")
    terminalreporter.write_line(
        f"{name}: {counts[Verdict.PASSED]} passed ({whole} taken whole), {counts[Verdict.DECLINED]} declined, "
        f"{counts[Verdict.NOT_RUN]} not run here, {counts[Verdict.FAILED]} failed; the table: {table}")
    from edgeport.testing.kit import nothing_passed

    if nothing_passed(name, outcomes):
        terminalreporter.write_line(f"{name}: {nothing_passed(name, outcomes)}", red=True)
