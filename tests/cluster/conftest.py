"""Fixtures for the real-process cluster tests (see harness.py for how to run).

`cluster` is a factory: cluster(tick_ms=20, test_faults=False) -> Cluster,
with its nodes under the test's tmp dir (tmp_path/clusterN/<node>/, each
process's log in its node directory). Every process of every cluster is
killed by pid at teardown; a process that exited on its own (a crash), a
sanitizer report in any log, or a fake daemon that got an undocumented reply
fails the test.

On failure the tail of every log is attached to the report (pytest prints it)
together with the directory holding the whole logs, which pytest keeps (its
basetemp keeps the last three runs).

`measure(name, value)` records a number the test measured; they are printed
in the terminal summary at the end of the run, even when tests pass.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import harness  # noqa: E402

_measurements = []


@pytest.fixture
def cluster(request, tmp_path):
    clusters = []
    request.node._keel_clusters = clusters

    def make(**kw):
        c = harness.Cluster(tmp_path / ("cluster%d" % (len(clusters) + 1)), **kw)
        clusters.append(c)
        return c

    yield make
    problems = []
    for c in clusters:
        problems += c.teardown()
    if problems:
        pytest.fail("cluster processes: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def measure(request):
    def record(name, value):
        _measurements.append((request.node.name, name, value))
        print("%s: %s" % (name, value))
    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the tail of every process log of a failed test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for c in getattr(item, "_keel_clusters", []):
            rep.sections.append(("keel logs (whole files under %s)" % c.base_dir,
                                 c.log_report()))


def pytest_terminal_summary(terminalreporter):
    if _measurements:
        terminalreporter.section("keel cluster measurements")
        for test, name, value in _measurements:
            terminalreporter.write_line("%s: %s = %s" % (test, name, value))
