"""Shared by test_chanx.py and the example's tests.

``CHANX_REQUIRE_ALL=1`` (set by ``.ci/run``) means every test must run: a test
that would be skipped (a missing redis-server, Chromium, jsonschema, the
AsyncAPI schema, ...) fails instead, with the skip's reason. An expected failure
(``xfail``) is not a skip and is left alone, nor is a skip whose reason starts
with ``database:``: a test of one database's behaviour, run by the CI step on
that database (PostgreSQL's, or a real close() that in-memory SQLite ignores).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

REQUIRE_ALL = os.environ.get("CHANX_REQUIRE_ALL") == "1"


def _skip_reason(report: Any) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_instead(report: Any) -> None:
    report.outcome = "failed"
    reason = _skip_reason(report)
    report.longrepr = f"{reason} (a skip, but CHANX_REQUIRE_ALL=1: every test must run)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    database_specific = _skip_reason(report).startswith("Skipped: database:")
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail") and not database_specific:
        _fail_instead(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    if REQUIRE_ALL and report.skipped:  # pytest.skip(..., allow_module_level=True)
        _fail_instead(report)
