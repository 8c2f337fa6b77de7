"""Shared fixtures: backends skip with the precise reason they are unavailable."""

import pytest

import backends


def pytest_collection_finish(session):
    """Start the PTX compile of the Numba kernels in the background as soon as a test that needs
    it is collected, so that it overlaps with the tests that run before it."""
    if any("ptx_results" in getattr(item, "fixturenames", ()) for item in session.items):
        import ptx_background

        ptx_background.start()


def pytest_sessionfinish(session):
    import sys

    if "ptx_background" in sys.modules:
        sys.modules["ptx_background"].stop()


def pytest_report_header(config):
    return ["refimpl backends: " + ", ".join(
        f"{name}={'ok' if why is None else 'unavailable (' + why + ')'}"
        for name, why in backends.available().items())]


@pytest.fixture(params=backends.NAMES)
def backend(request):
    """Each backend module, or a skip naming why it cannot run here."""
    why = backends.reason(request.param)
    if why is not None:
        pytest.skip(f"backend {request.param}: {why}")
    return backends.get(request.param)
