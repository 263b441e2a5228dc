"""The fuzzing suites' figures: each suite adds one summary line, shown at the end of the run
(``make test`` included, whose pytest captures what tests print)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

LINES: list[str] = []


@pytest.fixture(scope="session")
def fuzz_summary() -> Callable[[str], None]:
    """Call with one line (the counts of cases run); it is printed in the run's closing summary."""
    return LINES.append


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if LINES:
        terminalreporter.section("fuzzing: cases run")
        for line in LINES:
            terminalreporter.write_line(line)
