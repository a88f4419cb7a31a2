{{/*
Internal mTLS: one CA per install and one certificate per component, with the
identity <component>.aion.internal (aion.core.pki's contract). Both are kept across
`helm upgrade` by looking up the Secrets already in the cluster: an upgrade re-issues
a component's certificate only when it is missing, signed by another CA, or within
tls.renewBeforeDays of expiry, so pods roll (checksum/tls) only then. Offline renders
(`helm template`, client dry runs) cannot look up and make fresh ones each time.
Everything is computed once per render and kept in .Values.__aionTLS, so the
Secrets and the pods' checksums agree.
*/}}

{{/* The Secret holding the install CA (tls.crt, tls.key): yours or the chart's. */}}
{{- define "aion.tlsCASecret" -}}
{{- .Values.tls.existingCASecret | default (printf "%s-tls-ca" (include "aion.fullname" .)) -}}
{{- end -}}

{{/* A component's certificate Secret. Args: dict "root" $ "component" "agent". */}}
{{- define "aion.tlsSecret" -}}
{{- printf "%s-tls" (include "aion.componentName" .) -}}
{{- end -}}

{{/* The install CA into .Values.__aionTLS.ca (crt, key PEM). Args: the root context. */}}
{{- define "aion.tlsCA" -}}
{{- if not (hasKey .Values "__aionTLS") -}}
{{- $_ := set .Values "__aionTLS" (dict) -}}
{{- end -}}
{{- $cache := get .Values "__aionTLS" -}}
{{- if not (hasKey $cache "ca") -}}
{{- $name := include "aion.tlsCASecret" . -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace $name | default dict -}}
{{- $data := get $found "data" | default dict -}}
{{- if and (get $data "tls.crt") (get $data "tls.key") -}}
{{- $_ := set $cache "ca" (dict "crt" (get $data "tls.crt" | b64dec) "key" (get $data "tls.key" | b64dec)) -}}
{{- else if and .Values.tls.existingCASecret (lookup "v1" "Namespace" "" .Release.Namespace) -}}
{{- fail (printf "tls.existingCASecret: Secret %q in namespace %q must exist and hold tls.crt and tls.key (the CA's certificate and key, PEM)" $name .Release.Namespace) -}}
{{- else -}}
{{- $ca := genCAWithKey "aion internal CA" (int .Values.tls.caDays) (genPrivateKey "ecdsa") -}}
{{- $_ := set $cache "ca" (dict "crt" $ca.Cert "key" $ca.Key) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A component's certificate into .Values.__aionTLS.<component> (crt, key, notAfter). Args: dict "root" $ "component" "agent". */}}
{{- define "aion.tlsCert" -}}
{{- $root := .root -}}
{{- include "aion.tlsCA" $root -}}
{{- $cache := get $root.Values "__aionTLS" -}}
{{- if not (hasKey $cache .component) -}}
{{- $ca := get $cache "ca" -}}
{{- $found := lookup "v1" "Secret" $root.Release.Namespace (include "aion.tlsSecret" .) | default dict -}}
{{- $data := get $found "data" | default dict -}}
{{- $meta := get $found "metadata" | default dict -}}
{{- $notAfter := get (get $meta "annotations" | default dict) "aion.dev/not-after" | default "0" | int64 -}}
{{- $now := now | unixEpoch | int64 -}}
{{- $renewAt := add $now (mul $root.Values.tls.renewBeforeDays 86400) -}}
{{- $sameCA := eq (get $data "ca.crt" | default "" | b64dec) $ca.crt -}}
{{- if and (get $data "tls.crt") (get $data "tls.key") $sameCA (gt $notAfter $renewAt) -}}
{{- $_ := set $cache .component (dict "crt" (get $data "tls.crt" | b64dec) "key" (get $data "tls.key" | b64dec) "notAfter" $notAfter) -}}
{{- else -}}
{{- $signer := buildCustomCert ($ca.crt | b64enc) ($ca.key | b64enc) -}}
{{- $days := int $root.Values.tls.certDays -}}
{{- $cert := genSignedCertWithKey .component nil (list (printf "%s.aion.internal" .component)) $days $signer (genPrivateKey "ecdsa") -}}
{{- $_ := set $cache .component (dict "crt" $cert.Cert "key" $cert.Key "notAfter" (add $now (mul $days 86400))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The pod annotation that rolls a component's pods when its certificate changes. Args: dict "root" $ "component" "agent". */}}
{{- define "aion.tlsChecksum" -}}
{{- include "aion.tlsCert" . -}}
{{- $cert := get (get .root.Values "__aionTLS") .component -}}
checksum/tls: {{ $cert.crt | sha256sum }}
{{- end -}}

{{/* The env every internal gRPC client and server reads (not service-prefixed). */}}
{{- define "aion.tlsEnv" -}}
- name: AION_TLS_CA_FILE
  value: /etc/aion/tls/ca.crt
- name: AION_TLS_CERT_FILE
  value: /etc/aion/tls/tls.crt
- name: AION_TLS_KEY_FILE
  value: /etc/aion/tls/tls.key
{{- end -}}

{{/* The container's mount of its certificate. */}}
{{- define "aion.tlsMount" -}}
- name: tls
  mountPath: /etc/aion/tls
  readOnly: true
{{- end -}}

{{/* The pod's volume of its certificate Secret. Args: dict "root" $ "component" "agent". */}}
{{- define "aion.tlsVolume" -}}
- name: tls
  secret:
    secretName: {{ include "aion.tlsSecret" . }}
    defaultMode: 0440
{{- end -}}
