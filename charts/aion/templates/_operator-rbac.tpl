{{/* The operator's rules in a namespace whose Agents it reconciles: in its ClusterRole
when it watches every namespace, else in a Role per watched namespace
(operator-rbac.yaml). */}}
{{- define "aion.operatorNamespacedRules" -}}
- apiGroups: [aion.dev]
  resources: [agents]
  # delete: the pre-delete hook removes the release's own Agents (uninstall-hook.yaml).
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [aion.dev]
  resources: [agents/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: [aion.dev]
  resources: [agents/finalizers]
  verbs: [update]
# Executors are written by server-side apply (patch creates them); the timer reads
# each Agent's Deployment for its ready replicas.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, update, patch, delete]
# An HPA that targets an executor Deployment owns its replica count; the operator
# then leaves replicas out of what it applies.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch]
# Placement outcomes (Placed, NoCapacity, NoEligiblePool), refusals (TenantMismatch)
# and kopf's handler outcomes are Events on the Agent.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create]
# Internal mTLS: the operator keeps the Secrets aion-executor-tls (the executors'
# certificate, which it renews) and aion-executor-http (their HTTP bearer token), and
# applies each Agent's executor NetworkPolicy (server-side apply: patch). get also
# reads the Secrets an Agent's spec.toolCredentials names (its tool servers' keys).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
{{- end }}
