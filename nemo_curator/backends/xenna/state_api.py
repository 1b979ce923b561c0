"""Fitting cosmos-xenna's Ray state-API queries to the limit the connected cluster accepts.

cosmos-xenna's monitoring lists the cluster's actors through Ray's state API with
``limit=cosmos_xenna.ray_utils.cluster.API_LIMIT`` (40,000): on every ``run_pipeline`` it
writes that number into the driver's ``RAY_MAX_LIMIT_FROM_API_SERVER`` and its monitor reads
it back as the limit to ask for. The dashboard refuses any limit above its own
``RAY_MAX_LIMIT_FROM_API_SERVER``, which it reads once, when the cluster starts. A cluster
started by a plain ``ray start`` accepts 10,000, so xenna fails once its workers are up.

``fitted_state_api_limit`` asks the dashboard, before any work, which limit it accepts, and
for the run's duration lowers xenna's ``API_LIMIT`` to it (restoring both afterwards). A lower
limit only shortens the actor list xenna's monitoring sees on clusters with more actors than
that; nothing of a run's outcome depends on it. When the limit cannot be learned (no
dashboard, an unknown answer, a cosmos-xenna without ``API_LIMIT``) the run is refused with
an error that names what to set when the cluster is started.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager

from loguru import logger

#: The environment variables ``ray start`` must see for cosmos-xenna's own limit of 40,000.
LIMIT_ENV_VARS = ("RAY_MAX_LIMIT_FROM_API_SERVER", "RAY_MAX_LIMIT_FROM_DATA_SOURCE")

_SUPPORTED_LIMIT = re.compile(r"exceeds the supported limit (\d+)")
#: Seconds the probe may take (one small request to the dashboard).
_PROBE_TIMEOUT_S = 30


class XennaClusterError(RuntimeError):
    """The connected Ray cluster cannot serve cosmos-xenna; the message says what to change."""


def start_command_hint(limit: int) -> str:
    """How to start a cluster that serves cosmos-xenna's state queries of ``limit`` entries."""
    env = " ".join(f"{key}={limit}" for key in LIMIT_ENV_VARS)
    return f"start the cluster with `{env} ray start --head --include-dashboard=true ...`"


def supported_limit_from_error(message: str) -> int | None:
    """The dashboard's limit named in its refusal of a larger one, if the message names it."""
    match = _SUPPORTED_LIMIT.search(message)
    return int(match.group(1)) if match else None


def cluster_state_api_limit(wanted: int) -> int:
    """The largest list limit up to ``wanted`` that the connected cluster's state API accepts.

    Asks for the node list (small on any cluster) with ``limit=wanted``: the dashboard checks
    the limit before it reads anything and names its own limit when it refuses. Raises
    ``XennaClusterError`` when the state API cannot be reached or its answer is not understood.
    """
    from ray.util.state import list_nodes

    try:
        list_nodes(limit=wanted, timeout=_PROBE_TIMEOUT_S, raise_on_missing_output=False)
        return wanted
    except Exception as exc:  # the state API raises several types; all are handled alike
        supported = supported_limit_from_error(str(exc))
        if supported is not None and 0 < supported < wanted:
            return supported
        raise XennaClusterError(
            "XennaExecutor: cosmos-xenna needs the Ray cluster's state API (served by the Ray "
            f"dashboard), and asking it for {wanted} entries failed: {exc}. If you started the "
            f"cluster yourself, {start_command_hint(wanted)}"
        ) from exc


@contextmanager
def fitted_state_api_limit() -> Iterator[int]:
    """For the body, make cosmos-xenna ask the state API for no more than the cluster accepts.

    Yields the limit in force. Invariant: afterwards xenna's ``API_LIMIT`` and the driver's
    ``RAY_MAX_LIMIT_*`` variables are what they were before (xenna overwrites the variables on
    every run).
    """
    from cosmos_xenna.ray_utils import cluster as xenna_cluster

    wanted = getattr(xenna_cluster, "API_LIMIT", None)
    if not isinstance(wanted, int):
        raise XennaClusterError(
            "XennaExecutor: this cosmos-xenna version has no `cosmos_xenna.ray_utils.cluster.API_LIMIT`, "
            "so the limit of its state queries cannot be fitted to the cluster; if you started the "
            f"cluster yourself, {start_command_hint(40000)}"
        )
    limit = cluster_state_api_limit(wanted)
    if limit < wanted:
        logger.info(
            "xenna: the Ray cluster's state API lists at most {} entries (cosmos-xenna asks for {}); "
            "its monitoring asks for {} in this run",
            limit,
            wanted,
            limit,
        )
    saved_env = {key: os.environ.get(key) for key in LIMIT_ENV_VARS}
    xenna_cluster.API_LIMIT = limit
    try:
        yield limit
    finally:
        xenna_cluster.API_LIMIT = wanted
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
