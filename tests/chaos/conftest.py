"""The chaos suite's figures: every scenario adds its row; the table is printed at the end
(and written to $CACHEWIRE_CHAOS_REPORT when set, which `make chaos` uses)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.chaos.checker import Figures, table
from tests.chaos.harness import Deployment, Options

ROWS: list[Figures] = []
SOAK_LINES: list[str] = []


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Callable[..., Deployment]]:
    """Factory: deployment(Options(...)) → a started Deployment, closed after the test."""
    started: list[Deployment] = []

    def make(opts: Options | None = None, **kwargs: object) -> Deployment:
        dep = Deployment(opts or Options(), tmp_path, **kwargs)  # type: ignore[arg-type]
        started.append(dep)
        return dep.start()

    yield make
    for dep in started:
        dep.close()


def record(fig: Figures) -> None:
    """Keep the row for the table, then hold the scenario to 0 violations."""
    ROWS.append(fig)
    assert fig.violations == 0, "\n".join(fig.details[:10])
    assert fig.published > 0 and fig.checks > 0


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    text = "\n".join([table(ROWS), "", *SOAK_LINES]).rstrip()
    terminalreporter.write_sep("=", "chaos figures (latency: publish → gone from the cache)")
    terminalreporter.write_line(text)
    if path := os.environ.get("CACHEWIRE_CHAOS_REPORT"):
        Path(path).write_text(text + "\n")
