"""pytest plugin used by scripts/gpu_check.py: prints each failure's report the moment the test
fails, not in the end-of-session summary, so that a run stopped by its time budget or a crash
(a segfault in a kernel) still shows why the earlier tests failed. Load with -p pytest_live_report."""


def pytest_runtest_logreport(report):
    if report.failed:
        print(
            f"\n----- LIVE FAILURE {report.nodeid} ({report.when}) -----\n{report.longreprtext}\n----- END {report.nodeid}",
            flush=True,
        )
