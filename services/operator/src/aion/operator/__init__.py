"""aion operator: reconciles Agent resources onto GPU node pools (kopf).

- ``settings``: the operator's configuration (``AION_OPERATOR_*``).
- ``pools``: GPU node pools and their free GPUs, from nodes, pods and GpuPools.
- ``placement``: the pool an Agent goes to (cheapest eligible with room), and why.
- ``render``: the executor Deployment and Service of an Agent, as pure functions.
- ``stuck``: executor pods the scheduler cannot place, and for how long (fallback).
- ``conditions``: status conditions, merged the Kubernetes way.
- ``registration``: what the agent service is told about a Ready Agent, and the calls.
- ``kube``: the lightkube client: informers for nodes and bound pods, server-side applies.
- ``lease``: leader election on a Lease, so one of several replicas reconciles.
- ``handlers``: the kopf handlers, registered on a registry passed in.
- ``main``: the composition root (``python -m aion.operator``).
"""

__all__: list[str] = []
