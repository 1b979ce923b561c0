"""Fitting the stages' CPU requests into the cluster, one factor for all (shared by the executors).

A streaming pipeline needs a worker of every stage alive at once. When the stages ask for
more CPUs than the cluster has, waiting is not an option (a stage without a worker stops the
stream for good), so every CPU request is scaled down by the same factor: proportions are
kept and the work shares the cores. What counts as the demand, and what a backend must
add (a floor per node, an anti-fusion step, a GPU check), stays with each backend.
"""

from __future__ import annotations

import math

#: Ray accepts fractional resource quantities down to this step.
RAY_RESOURCE_STEP = 1e-4

#: Absorbs float error before rounding down, so an exact multiple of the step stays itself.
_EPSILON = 1e-9


def scale_cpu_requests(
    requests: list[float], counts: list[int], capacity: float, step: float = RAY_RESOURCE_STEP
) -> tuple[list[float], float]:
    """Scale ``requests`` by one factor so that ``sum(requests[i] * counts[i]) <= capacity``.

    Returns the requests and the factor. Invariants: when they already fit (or ask for
    nothing) they come back unchanged with factor 1.0; otherwise every positive request is
    multiplied by ``capacity / demand`` and rounded down to a multiple of ``step``, but never
    below one ``step``; requests of zero (or less) are kept as they are. A count of 0 keeps a
    request out of the demand and still scales it.
    """
    demand = sum(max(r, 0.0) * n for r, n in zip(requests, counts, strict=True))
    if demand <= capacity or demand <= 0:
        return list(requests), 1.0
    factor = max(capacity, 0.0) / demand
    # max(.., step): a cluster reporting no CPU at all (factor 0) still gets non-empty requests.
    return [max(round_down_to_step(r * factor, step), step) if r > 0 else r for r in requests], factor


def round_down_to_step(cpus: float, step: float = RAY_RESOURCE_STEP) -> float:
    """``cpus`` rounded down to a multiple of ``step``; a positive value stays at least one step."""
    if cpus <= 0:
        return cpus
    per_cpu = round(1 / step)
    return max(math.floor(cpus * per_cpu + _EPSILON), 1) / per_cpu


# -- a cluster that shrinks during a run ------------------------------------------------------


class ClusterShrankError(RuntimeError):
    """A run's workers no longer fit into the cluster's alive nodes (a node was lost)."""


def missing_resources(demand: dict[str, float], capacity: dict[str, float]) -> dict[str, float]:
    """What ``capacity`` lacks to hold ``demand`` (resource name -> shortfall); empty when it fits.

    Invariant: a resource is listed only when the demand exceeds the capacity by more than
    float noise; a resource absent from ``capacity`` counts as zero.
    """
    return {
        name: wanted - capacity.get(name, 0.0)
        for name, wanted in demand.items()
        if wanted - capacity.get(name, 0.0) > _EPSILON * max(1.0, wanted)
    }


def alive_capacity(nodes: list[dict]) -> dict[str, float]:
    """Total CPU and GPU of the nodes that ``ray.nodes()`` lists as alive."""
    total = {"CPU": 0.0, "GPU": 0.0}
    for node in nodes:
        if node.get("Alive", node.get("alive", False)):
            for name in total:
                total[name] += float(node.get("Resources", {}).get(name, 0.0))
    return total
