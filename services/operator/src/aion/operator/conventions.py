"""The well-known names the operator reads and writes, in one place (kopf's ``conventions``).

The resources it watches, the labels and annotations it puts on objects or reads
from nodes, kopf's bookkeeping prefix, and the condition types and reasons of an
Agent's status. They are part of the operator's contract with the chart, with
GPU feature discovery and with whoever reads ``kubectl describe``: changing one is
a migration, so each is spelled once and imported from here.
"""

from __future__ import annotations

from typing import Final

# -- the resources ------------------------------------------------------------------------
GROUP: Final = "aion.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
AGENT_KIND: Final = "Agent"
AGENT_PLURAL: Final = "agents"
GPU_POOL_KIND: Final = "GpuPool"
GPU_POOL_PLURAL: Final = "gpupools"
# The field manager of the operator's server-side applies.
FIELD_MANAGER: Final = "aion-operator"

# -- annotations and labels ---------------------------------------------------------------
# Prefix of the annotations where kopf keeps its progress (of the delete handler).
ANNOTATIONS_PREFIX: Final = "operator.aion.dev"
FINALIZER: Final = f"{ANNOTATIONS_PREFIX}/finalizer"
# An Agent's description before spec.description existed; still read as a fallback.
DESCRIPTION_ANNOTATION: Final = "aion.dev/description"
# On everything rendered for an Agent: which Agent it is for.
AGENT_LABEL: Final = "aion.dev/agent"
# Node labels naming a node's pool, most specific first (the last one is set by hand).
POOL_LABELS: Final = (
    "cloud.google.com/gke-nodepool",
    "eks.amazonaws.com/nodegroup",
    "kubernetes.azure.com/agentpool",
    "karpenter.sh/nodepool",
    "aion.dev/node-pool",
)
# The Secrets the operator keeps in each Agent namespace for the executors, and the
# annotations that say when a certificate expires and which one a pod mounts.
TLS_SECRET: Final = "aion-executor-tls"
HTTP_SECRET: Final = "aion-executor-http"
TOKEN_KEY: Final = "token"
NOT_AFTER: Final = "aion.dev/not-after"
TLS_ANNOTATION: Final = "aion.dev/tls-serial"
GPU_RESOURCE: Final = "nvidia.com/gpu"
# Labels that NVIDIA GPU feature discovery puts on GPU nodes (memory in MiB).
GPU_PRODUCT_LABEL: Final = "nvidia.com/gpu.product"
GPU_MEMORY_LABEL: Final = "nvidia.com/gpu.memory"

# -- an Agent's condition types -----------------------------------------------------------
PLACED: Final = "Placed"
READY: Final = "Ready"
MODEL_READY: Final = "ModelReady"
REGISTERED: Final = "Registered"
CAPACITY_DEGRADED: Final = "CapacityDegraded"

# -- reasons ------------------------------------------------------------------------------
# Of Placed (and of the Events saying the same).
PLACED_ON_POOL: Final = "Placed"
NO_ELIGIBLE_POOL: Final = "NoEligiblePool"
NO_CAPACITY: Final = "NoCapacity"
INVALID_SPEC: Final = "InvalidSpec"
# Of CapacityDegraded.
FELL_BACK: Final = "FellBack"
# Of Registered.
ALREADY_REGISTERED: Final = "AlreadyRegistered"
TENANT_MISMATCH: Final = "TenantMismatch"
AGENT_SERVICE_UNAVAILABLE: Final = "AgentServiceUnavailable"
# Of Registered, for a Secret of spec.toolCredentials: missing (or its key), one of the
# operator's own, or a value no HTTP header can carry.
SECRET_NOT_FOUND: Final = "SecretNotFound"
SECRET_NOT_ALLOWED: Final = "SecretNotAllowed"
INVALID_SECRET: Final = "InvalidSecret"
