"""aion operator: reconciles Agent resources onto GPU node pools (kopf).

- ``settings``: the operator's configuration (``AION_OPERATOR_*``).
- ``spec``: the Agent spec, validated as the CRD declares it.
- ``pools``: GPU node pools and their free GPUs, from nodes, pods and GpuPools.
- ``placement``: the pool an Agent goes to (cheapest eligible with room), and why.
- ``render``: the executor Deployment and Service of an Agent, as pure functions.
- ``conditions``: status conditions, merged the Kubernetes way.
- ``kube``: the lightkube client's reads and server-side applies (Agent, GpuPool).
- ``handlers``: the kopf handlers, registered on a registry passed in.
- ``main``: the composition root (``python -m aion.operator``).
"""

__all__: list[str] = []
