"""Shared fixtures: backends skip with the precise reason they are unavailable."""

import pytest

import backends


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
