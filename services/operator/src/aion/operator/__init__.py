"""aion operator: reconciles Agent resources onto GPU node pools (kopf).

From the top of the import graph down (``.importlinter`` keeps it so):

- ``main``: the composition root (``python -m aion.operator``); ``uninstall``: the
  chart's pre-delete hook.
- ``handlers``: the kopf registrations, on a registry passed in (kopf's ``on``).
- ``reconcile``: the API calls of handling an Agent: place, follow, deregister.
- ``kube``: the lightkube client: informers for nodes and bound pods, server-side applies.
- ``lease``: leader election on a Lease (``leadership``), so one of several replicas acts.
- ``registration``: what the agent service is told about a Ready Agent, and the calls.
- ``credentials``: the tool servers' credentials, read from the Secrets an Agent names.
- ``executor_secrets``: the executors' certificate and HTTP token, kept in each namespace.
- ``status``: what handling an Agent decides, as pure functions (kopf's ``causes``).
- ``placement``: the pool an Agent goes to (cheapest eligible with room), and why.
- ``render``: the executor Deployment, Service and NetworkPolicy of an Agent.
- ``stuck``: executor pods the scheduler cannot place or that cannot run.
- ``pools``: GPU node pools and their free GPUs, from nodes, pods and GpuPools.
- ``conditions``: status conditions, merged the Kubernetes way.
- ``conventions``: well-known names (resources, labels, annotations, condition types).
- ``settings``: the operator's configuration (``AION_OPERATOR_*``).

The Agent spec itself is ``aion.core.agentspec``, shared with the agent service.
"""

__all__: list[str] = []
