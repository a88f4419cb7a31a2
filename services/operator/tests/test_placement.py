"""Choosing a pool: eligibility, free capacity, order, and messages an agent owner can act on."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import pytest

from aion.core import agentspec
from aion.operator import placement, pools

H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"
# Prices in the ballpark of on-demand cloud GPUs.
PRICED = {"h100": pools.PoolConfig(price=4.5), "l4": pools.PoolConfig(price=0.7)}


def _gpu_pod(node: str, gpus: int, *, phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"user-{node}-{gpus}", "namespace": "other-team"},
        "spec": {
            "nodeName": node,
            "containers": [
                {"name": "main", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}
            ],
        },
        "status": {"phase": phase},
    }


def _cluster(
    nodes: list[dict[str, Any]],
    pods: Sequence[dict[str, Any]] = (),
    configs: dict[str, pools.PoolConfig] | None = None,
) -> tuple[pools.Pool, ...]:
    return pools.discover(nodes, pods, configs=PRICED if configs is None else configs)


def _choose(
    data: dict[str, Any], found: Sequence[pools.Pool], exclude: Collection[str] = ()
) -> placement.Placement:
    return placement.choose(
        agentspec.parse({"model": {"name": "m"}, **data}), found, exclude=exclude
    )


def _name(chosen: placement.Placement) -> str | None:
    return chosen.pool.name if chosen.pool else None


H100_FULL = [_gpu_pod("h100-0", 8), _gpu_pod("h100-1", 8)]


def test_the_cheapest_eligible_pool_with_free_capacity(local_nodes: list[dict[str, Any]]) -> None:
    chosen = _choose({"gpu": {"count": 1}}, _cluster(local_nodes, [_gpu_pod("l4-0", 1)]))
    assert (_name(chosen), chosen.reason) == ("l4", "Placed")
    assert chosen.message == (
        "cheapest eligible pool with free capacity: l4 ($0.70/GPU-h, 3 of 4 GPUs free)"
    )
    assert chosen.eligible == ("l4", "h100")
    assert chosen.pool is not None
    assert chosen.pool.label == "cloud.google.com/gke-nodepool"


def test_full_cheaper_pool_falls_to_the_next(local_nodes: list[dict[str, Any]]) -> None:
    l4_full = [_gpu_pod(f"l4-{i}", 1) for i in range(4)]
    chosen = _choose({"gpu": {"count": 1}}, _cluster(local_nodes, l4_full))
    assert (_name(chosen), chosen.reason) == ("h100", "Placed")
    assert chosen.message == (
        "cheapest eligible pool with free capacity: h100 ($4.50/GPU-h, 16 of 16 GPUs free); "
        "l4 skipped: 0 free GPUs on any node (0 of 4 GPUs free)"
    )


def test_full_h100_sends_an_agent_that_takes_either_to_l4(
    local_nodes: list[dict[str, Any]],
) -> None:
    # Unpriced pools (no GpuPools) order by name, so h100 comes first while it has room.
    data = {"gpu": {"count": 1, "products": [H100, L4]}}
    assert _name(_choose(data, _cluster(local_nodes, configs={}))) == "h100"
    chosen = _choose(data, _cluster(local_nodes, H100_FULL, configs={}))
    assert (_name(chosen), chosen.reason) == ("l4", "Placed")
    assert chosen.message == (
        "eligible (unpriced) pool with free capacity: l4 (unpriced, 4 of 4 GPUs free); "
        "h100 skipped: 0 free GPUs on any node (0 of 16 GPUs free)"
    )


def test_h100_only_agent_with_h100_full_has_no_capacity(local_nodes: list[dict[str, Any]]) -> None:
    chosen = _choose({"gpu": {"count": 1, "products": [H100]}}, _cluster(local_nodes, H100_FULL))
    assert (chosen.pool, chosen.reason) == (None, "NoCapacity")
    assert chosen.eligible == ("h100",)
    assert chosen.message == (
        "no eligible pool has 1 free GPU on one node for 1 GPU of NVIDIA-H100-80GB-HBM3: "
        "h100 ($4.50/GPU-h): 0 free GPUs on any node (0 of 16 GPUs free); "
        "l4 not eligible: has NVIDIA-L4, not an accepted product; "
        "system not eligible: has no GPUs"
    )


def test_free_gpus_spread_over_nodes_do_not_fit_one_pod(local_nodes: list[dict[str, Any]]) -> None:
    found = _cluster(local_nodes, [_gpu_pod("h100-0", 7), _gpu_pod("h100-1", 7)])
    chosen = _choose({"gpu": {"count": 2}}, found)
    assert chosen.reason == "NoCapacity"
    assert "h100 ($4.50/GPU-h): at most 1 free on one node, 2 needed (2 of 16 GPUs free)" in (
        chosen.message
    )
    assert "l4 not eligible: its largest node has 1 GPU, 2 needed" in chosen.message
    assert _name(_choose({"gpu": {"count": 1}}, found)) == "l4"


def test_a_product_no_pool_has(local_nodes: list[dict[str, Any]]) -> None:
    chosen = _choose(
        {"gpu": {"count": 1, "products": ["NVIDIA-A100-SXM4-80GB"]}}, _cluster(local_nodes)
    )
    assert (chosen.pool, chosen.reason, chosen.eligible) == (None, "NoEligiblePool", ())
    assert chosen.message == (
        "no pool has GPU product NVIDIA-A100-SXM4-80GB; the pools have: "
        "NVIDIA-H100-80GB-HBM3 (h100), NVIDIA-L4 (l4)"
    )


def test_more_gpus_than_any_node_holds(local_nodes: list[dict[str, Any]]) -> None:
    chosen = _choose({"gpu": {"count": 16}}, _cluster(local_nodes))
    assert (chosen.pool, chosen.reason) == (None, "NoEligiblePool")
    assert chosen.message == ("no node in any pool has 16 GPUs; the largest has 8 GPUs (h100)")
    # Eight fit on one h100 node, even though both together hold 16.
    assert _name(_choose({"gpu": {"count": 8}}, _cluster(local_nodes))) == "h100"


def test_gpu_memory_is_compared_in_mib_as_the_node_affinity_does(
    local_nodes: list[dict[str, Any]],
) -> None:
    found = _cluster(local_nodes)
    assert _name(_choose({"gpu": {"count": 1, "minMemoryGiB": 20}}, found)) == "l4"
    assert _name(_choose({"gpu": {"count": 1, "minMemoryGiB": 24}}, found)) == "h100"
    # An "80GB" H100 reports 81559 MiB, under 80 GiB (81920 MiB).
    chosen = _choose({"gpu": {"count": 1, "minMemoryGiB": 80}}, found)
    assert chosen.reason == "NoEligiblePool"
    assert chosen.message == (
        "no eligible pool for 1 GPU with at least 80 GiB each: "
        "l4: its GPUs have 23034 MiB (22.5 GiB), less than 80 GiB; "
        "h100: its GPUs have 81559 MiB (79.6 GiB), less than 80 GiB; "
        "system: has no GPUs"
    )


def test_price_cap(local_nodes: list[dict[str, Any]]) -> None:
    l4_full = [_gpu_pod(f"l4-{i}", 1) for i in range(4)]
    capped = {"gpu": {"count": 1}, "placement": {"maxPricePerGpuHour": 1.0}}
    assert _name(_choose(capped, _cluster(local_nodes))) == "l4"
    chosen = _choose(capped, _cluster(local_nodes, l4_full))
    assert (chosen.pool, chosen.reason, chosen.eligible) == (None, "NoCapacity", ("l4",))
    assert "h100 not eligible: $4.50/GPU-h is over the $1.00/GPU-h cap" in chosen.message
    too_low = _choose(
        {"gpu": {"count": 1}, "placement": {"maxPricePerGpuHour": 0.5}}, _cluster(local_nodes)
    )
    assert too_low.reason == "NoEligiblePool"
    assert too_low.message == (
        "no eligible pool for 1 GPU: l4: $0.70/GPU-h is over the $0.50/GPU-h cap; "
        "h100: $4.50/GPU-h is over the $0.50/GPU-h cap; system: has no GPUs"
    )


def test_a_price_cap_refuses_unpriced_pools(local_nodes: list[dict[str, Any]]) -> None:
    found = _cluster(local_nodes, configs={"h100": pools.PoolConfig(price=4.5)})
    chosen = _choose({"gpu": {"count": 1}, "placement": {"maxPricePerGpuHour": 10}}, found)
    assert _name(chosen) == "h100"
    assert "l4" not in chosen.message  # l4 would have come after h100 anyway
    assert _name(_choose({"gpu": {"count": 1}}, found)) == "h100"  # priced before unpriced
    chosen = _choose(
        {"gpu": {"count": 1, "products": [L4]}, "placement": {"maxPricePerGpuHour": 10}}, found
    )
    assert chosen.reason == "NoEligiblePool"
    assert (
        "l4: is unpriced (no GpuPool price) and the Agent caps the price at $10.00/GPU-h"
    ) in chosen.message


def test_preferred_pools_come_first_in_their_order(local_nodes: list[dict[str, Any]]) -> None:
    found = _cluster(local_nodes)
    chosen = _choose({"gpu": {"count": 1}, "placement": {"preferredPools": ["h100"]}}, found)
    assert _name(chosen) == "h100"
    assert chosen.message == (
        "first preferred pool with free capacity: h100 ($4.50/GPU-h, 16 of 16 GPUs free)"
    )
    assert chosen.eligible == ("h100", "l4")
    both = {
        "gpu": {"count": 1},
        "placement": {"allowedPools": ["h100", "l4"], "preferredPools": ["h100", "l4"]},
    }
    assert _name(_choose(both, found)) == "h100"
    chosen = _choose(both, _cluster(local_nodes, H100_FULL))
    assert _name(chosen) == "l4"
    assert chosen.message == (
        "first preferred pool with free capacity: l4 ($0.70/GPU-h, 4 of 4 GPUs free); "
        "h100 skipped: 0 free GPUs on any node (0 of 16 GPUs free)"
    )


def test_allowed_pools(local_nodes: list[dict[str, Any]]) -> None:
    found = _cluster(local_nodes)
    chosen = _choose({"gpu": {"count": 1}, "placement": {"allowedPools": ["h100"]}}, found)
    assert (_name(chosen), chosen.eligible) == ("h100", ("h100",))
    assert "l4" not in chosen.message
    missing = _choose({"placement": {"allowedPools": ["a100", "a100-spot"]}}, found)
    assert missing.reason == "NoEligiblePool"
    assert missing.message == (
        "none of the allowed pools (a100, a100-spot) exists; the pools are: h100, l4, system"
    )


def test_equal_prices_go_by_priority_then_name(local_nodes: list[dict[str, Any]]) -> None:
    same = {"h100": pools.PoolConfig(price=1.0), "l4": pools.PoolConfig(price=1.0)}
    assert _name(_choose({}, _cluster(local_nodes, configs=same))) == "h100"
    ranked = {**same, "l4": pools.PoolConfig(price=1.0, priority=10)}
    assert _name(_choose({}, _cluster(local_nodes, configs=ranked))) == "l4"
    # Priority never beats a lower price, and an unpriced pool comes after priced ones.
    cheaper = {"h100": pools.PoolConfig(price=0.9), "l4": pools.PoolConfig(price=1.0, priority=10)}
    assert _name(_choose({}, _cluster(local_nodes, configs=cheaper))) == "h100"
    unpriced = {"l4": pools.PoolConfig(price=9.0), "h100": pools.PoolConfig(priority=100)}
    assert _name(_choose({}, _cluster(local_nodes, configs=unpriced))) == "l4"


def test_disabled_pools_are_skipped(local_nodes: list[dict[str, Any]]) -> None:
    closed = {**PRICED, "l4": pools.PoolConfig(price=0.7, disabled=True)}
    chosen = _choose({}, _cluster(local_nodes, configs=closed))
    assert _name(chosen) == "h100"
    assert chosen.message.endswith("; l4 skipped: disabled by its GpuPool")


def test_excluded_pools_are_not_chosen_again(local_nodes: list[dict[str, Any]]) -> None:
    found = _cluster(local_nodes)
    chosen = _choose({}, found, exclude={"l4"})
    assert (_name(chosen), chosen.eligible) == ("h100", ("h100",))
    assert chosen.message.endswith("; l4 skipped: the operator fell back from it")
    done = _choose({}, found, exclude={"l4", "h100"})
    assert (done.pool, done.reason, done.eligible) == (None, "NoCapacity", ())
    assert done.message == (
        "the operator fell back from every pool that fits 1 GPU: "
        "l4 excluded: the operator fell back from it; "
        "h100 excluded: the operator fell back from it; system not eligible: has no GPUs"
    )
    ineligible = _choose(
        {"gpu": {"count": 1, "products": ["NVIDIA-A100-SXM4-80GB"]}}, found, exclude={"h100"}
    )
    assert ineligible.reason == "NoEligiblePool"


def test_cpu_only_agents_go_to_pools_without_gpus(local_nodes: list[dict[str, Any]]) -> None:
    found = _cluster(local_nodes, configs={**PRICED, "system": pools.PoolConfig(price=99)})
    chosen = _choose({"gpu": {"count": 0}, "placement": {"maxPricePerGpuHour": 0.1}}, found)
    assert (_name(chosen), chosen.reason, chosen.eligible) == ("system", "Placed", ("system",))
    assert chosen.message == (
        "eligible pool for a CPU-only agent: system (2 Ready nodes without GPUs)"
    )
    gpu_only = [n for n in local_nodes if not n["metadata"]["name"].startswith("system")]
    refused = _choose({"gpu": {"count": 0}}, _cluster(gpu_only))
    assert (refused.pool, refused.reason) == (None, "NoEligiblePool")
    assert refused.message == (
        "no pool has nodes without GPUs, which a CPU-only agent "
        "(gpu.count 0) needs: it gets no GPU toleration"
    )


def test_cpu_only_agents_follow_preference_then_priority(local_nodes: list[dict[str, Any]]) -> None:
    web = [
        dict(
            n,
            metadata={
                **n["metadata"],
                "name": f"web-{i}",
                "labels": {"cloud.google.com/gke-nodepool": "web"},
            },
        )
        for i, n in enumerate(local_nodes[:2])
    ]
    nodes = local_nodes + web
    assert _name(_choose({"gpu": {"count": 0}}, _cluster(nodes))) == "system"
    ranked = {"web": pools.PoolConfig(priority=1)}
    assert _name(_choose({"gpu": {"count": 0}}, _cluster(nodes, configs=ranked))) == "web"
    chosen = _choose(
        {"gpu": {"count": 0}, "placement": {"preferredPools": ["web"]}}, _cluster(nodes)
    )
    assert chosen.message.startswith("preferred pool for a CPU-only agent: web")


def test_a_pool_whose_nodes_are_down_lacks_capacity(local_nodes: list[dict[str, Any]]) -> None:
    for node in local_nodes:
        if node["metadata"]["name"].startswith("h100"):
            node["status"]["conditions"][-1]["status"] = "False"
    chosen = _choose({"gpu": {"count": 4, "products": [H100]}}, _cluster(local_nodes))
    assert (chosen.reason, chosen.eligible) == ("NoCapacity", ("h100",))
    assert "h100 ($4.50/GPU-h): no Ready node that fits" in chosen.message


def test_a_mixed_pool_counts_only_the_nodes_that_fit() -> None:
    def node(name: str, product: str, gpus: int, memory: int) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "labels": {
                    "karpenter.sh/nodepool": "gpu",
                    "nvidia.com/gpu.product": product,
                    "nvidia.com/gpu.memory": str(memory),
                },
            },
            "status": {
                "allocatable": {"nvidia.com/gpu": str(gpus)},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }

    found = pools.discover(
        [node("big", H100, 8, 81559), node("small", L4, 1, 23034)], [_gpu_pod("big", 8)]
    )
    h100_only = _choose({"gpu": {"count": 1, "products": [H100]}}, found)
    assert h100_only.reason == "NoCapacity"
    assert "gpu (unpriced): 0 free GPUs on any node (0 of 8 GPUs free)" in h100_only.message
    assert _name(_choose({"gpu": {"count": 1}}, found)) == "gpu"


def test_no_pools_at_all() -> None:
    chosen = _choose({}, ())
    assert (chosen.pool, chosen.reason) == (None, "NoEligiblePool")
    assert chosen.message.startswith("no node pools found: no node carries a pool label (")
    assert "cloud.google.com/gke-nodepool" in chosen.message


def test_long_lists_are_cut_short() -> None:
    nodes = [
        {
            "metadata": {
                "name": f"n{i}",
                "labels": {"aion.dev/node-pool": f"p{i:02}", "nvidia.com/gpu.product": L4},
            },
            "status": {
                "allocatable": {"nvidia.com/gpu": "1"},
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }
        for i in range(12)
    ]
    chosen = _choose({"gpu": {"count": 2}}, pools.discover(nodes, []))
    assert chosen.reason == "NoEligiblePool"
    assert chosen.message == (
        "no node in any pool has 2 GPUs; the largest has 1 GPU "
        "(p00, p01, p02, p03, p04, p05, p06, p07 and 4 more)"
    )
    chosen = _choose(
        {"gpu": {"count": 1, "products": [H100, L4], "minMemoryGiB": 1}}, pools.discover(nodes, [])
    )
    assert chosen.message.count("its GPU memory is unknown") == placement.MAX_LISTED
    assert chosen.message.endswith("; 4 more pools skipped")


@pytest.mark.parametrize(
    ("price", "text"), [(0.7, "$0.70"), (12.0, "$12.00"), (0.035, "$0.035"), (0.0, "$0.00")]
)
def test_prices_read_as_dollars(price: float, text: str) -> None:
    assert placement.usd(price) == text
