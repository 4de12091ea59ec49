"""The progress bar of long work (lowering, checking): on a terminal only."""

import io
import sys

from edgeport.cli._output import progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_counts_partitions_on_a_terminal(monkeypatch):
    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with progress(True) as show:
        show("forward: capturing with torch.export")
        show("forward: compiling partition 2/5 on cpu (12 nodes)")
    text = screen.getvalue()
    assert "capturing with torch.export" in text
    assert "compiling partition 2/5 on cpu" in text and "1/5" in text  # one done, the second under way


def test_silent_in_json_mode_and_off_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe, a CI log
    with progress(True) as show:
        assert show is None
    monkeypatch.setattr(sys, "stderr", Terminal())
    with progress(False) as show:  # --json
        assert show is None
