"""The pure parts of running on clusters the executors did not start: the state-API limit the
dashboard names, resources lost with a node, and what to set when joining needs a token."""

from __future__ import annotations

import os

import pytest

from nemo_curator.backends.ray_runtime import _auth_hint
from nemo_curator.backends.resources import alive_capacity, missing_resources
from nemo_curator.backends.xenna.state_api import start_command_hint, supported_limit_from_error

# Ray 2.60's refusal, as the state API client reports it.
REFUSAL = (
    "API server internal error. See dashboard.log file for more details. Error: Given limit 40000 exceeds the "
    "supported limit 10000. Use a lower limit, or set the `RAY_MAX_LIMIT_FROM_API_SERVER` environment variable "
    "to a larger value."
)


def test_the_dashboards_own_limit_is_read_from_its_refusal() -> None:
    assert supported_limit_from_error(REFUSAL) == 10000
    assert supported_limit_from_error("Failed to connect to API server") is None


def test_the_start_hint_names_both_variables_and_the_dashboard() -> None:
    hint = start_command_hint(40000)
    assert "RAY_MAX_LIMIT_FROM_API_SERVER=40000" in hint and "RAY_MAX_LIMIT_FROM_DATA_SOURCE=40000" in hint
    assert "ray start --head --include-dashboard=true" in hint


def test_missing_resources_lists_only_real_shortfalls() -> None:
    assert missing_resources({"CPU": 2.5, "GPU": 0.0}, {"CPU": 4.0, "GPU": 0.0}) == {}
    assert missing_resources({"CPU": 2.5, "GPU": 0.0}, {"CPU": 2.0}) == {"CPU": 0.5}
    assert missing_resources({"CPU": 0.1 + 0.2}, {"CPU": 0.3}) == {}  # float noise is not a shortfall
    assert missing_resources({"GPU": 1.0}, {}) == {"GPU": 1.0}


def test_alive_capacity_counts_alive_nodes_only() -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 2.0, "memory": 1e9}},
        {"Alive": False, "Resources": {"CPU": 2.0, "GPU": 1.0}},
        {"Alive": True, "Resources": {"CPU": 1.0, "GPU": 1.0}},
    ]
    assert alive_capacity(nodes) == {"CPU": 3.0, "GPU": 1.0}


def _join_failure(message: str) -> ConnectionError:
    """What ``ray.init(address=...)`` raises: a ConnectionError caused by a RuntimeError with the text."""
    try:
        try:
            raise RuntimeError(message)
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 1.2.3.4:6379") from inner
    except ConnectionError as exc:
        return exc


def test_a_token_refusal_names_ray_auth_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _join_failure("Failed to connect to GCS. ray.exceptions.AuthenticationError: RPC error: InvalidAuthToken")
    assert "RAY_AUTH_MODE=token" in (_auth_hint(refused, auth_mode_set=False) or "")
    monkeypatch.setitem(os.environ, "RAY_AUTH_MODE", "token")
    assert "RAY_AUTH_MODE=token" in (_auth_hint(refused, auth_mode_set=True) or "")
    assert _auth_hint(_join_failure("Failed to connect to GCS: timed out"), auth_mode_set=False) is None
