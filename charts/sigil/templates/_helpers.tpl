{{/* Names. */}}
{{- define "sigil.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sigil.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sigil.serverName" -}}{{ include "sigil.fullname" . | trunc 56 | trimSuffix "-" }}-server{{- end -}}
{{- define "sigil.agentName" -}}{{ include "sigil.fullname" . | trunc 57 | trimSuffix "-" }}-agent{{- end -}}
{{- define "sigil.bundleConfigMapName" -}}{{ default (printf "%s-bundle" (include "sigil.fullname" . | trunc 56 | trimSuffix "-")) .Values.bundleConfigMap.name }}{{- end -}}

{{- define "sigil.serverServiceAccountName" -}}
{{- if .Values.server.serviceAccount.create -}}{{ default (include "sigil.serverName" .) .Values.server.serviceAccount.name }}{{- else -}}{{ default "default" .Values.server.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "sigil.agentServiceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}{{ default (include "sigil.agentName" .) .Values.agent.serviceAccount.name }}{{- else -}}{{ default "default" .Values.agent.serviceAccount.name }}{{- end -}}
{{- end -}}

{{/* Labels: every object gets the common ones; selectors use name, instance and component. */}}
{{- define "sigil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sigil.name" .root | quote }}
app.kubernetes.io/instance: {{ .root.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end -}}

{{- define "sigil.labels" -}}
{{ include "sigil.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service | quote }}
app.kubernetes.io/part-of: sigil
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The image: repository@digest, else repository:tag (default appVersion). */}}
{{- define "sigil.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{/* The image's node binary (Dockerfile: NODE_BINARY), for the init script. */}}
{{- define "sigil.nodeBinary" -}}/nodejs/bin/node{{- end -}}

{{/* Fixed paths inside the pods. */}}
{{- define "sigil.serverConfigPath" -}}/etc/sigil/server.yaml{{- end -}}
{{- define "sigil.agentConfigPath" -}}/etc/sigil/agent.yaml{{- end -}}
{{- define "sigil.serverDataDir" -}}/var/lib/sigil{{- end -}}
{{- define "sigil.agentDataDir" -}}/var/lib/sigil{{- end -}}
{{- define "sigil.bundleDir" -}}/etc/sigil-bundle{{- end -}}
{{- define "sigil.psatTokenDir" -}}/var/run/secrets/tokens{{- end -}}
{{- define "sigil.psatTokenFile" -}}sigil-agent{{- end -}}
{{- define "sigil.istioSocketDir" -}}/var/run/secrets/workload-spiffe-uds{{- end -}}

{{/*
Refuses a socket path whose directory is not Sigil's alone. The root init container hands that
directory of the node to runAsUser (chown, chmod 0755), the agent creates the socket in it, and
every workload mounts it: a system or runtime directory (/run, /tmp, /var/lib/kubelet,
/run/containerd …) would give the agent's user the node's directory and every workload the
sockets in it (a container runtime's socket answers a read-only mount too). Nor may it hold, be
or lie in a path the agent's pod uses. values.schema.json already refuses ., .. and empty
components and a directory less than two levels deep.
*/}}
{{- define "sigil.checkSocketPath" -}}
{{- $path := .Values.agent.socketPath -}}
{{- $dir := dir $path -}}
{{- if ne (clean $path) $path -}}
{{- fail (printf "agent.socketPath %q: not a clean absolute path (no ., .. or empty components)" $path) -}}
{{- end -}}
{{- if lt (len (splitList "/" (trimPrefix "/" $dir))) 2 -}}
{{- fail (printf "agent.socketPath %q: its directory %s is a top-level directory of the node; use a directory of its own, such as /run/sigil/sockets" $path $dir) -}}
{{- end -}}
{{- $shared := list "/var/run" "/var/lib" "/var/tmp" "/var/cache" "/var/spool" "/var/mail" "/var/opt" "/var/local" "/var/snap" "/run/lock" "/run/shm" "/run/mount" -}}
{{- if has $dir $shared -}}
{{- fail (printf "agent.socketPath %q: its directory %s is shared with the node's system; the chart hands the socket's directory to the agent's user and workloads mount it, so use a directory of its own, such as %s/sigil" $path $dir $dir) -}}
{{- end -}}
{{- $system := list "/proc" "/sys" "/dev" "/etc" "/boot" "/bin" "/sbin" "/lib" "/lib32" "/lib64" "/libx32" "/usr" "/root" "/home" "/snap" "/var/log" "/var/lib/kubelet" "/var/lib/containerd" "/var/lib/docker" "/var/lib/etcd" "/var/lib/cni" "/var/lib/calico" "/var/lib/rancher" "/opt/cni" "/run/containerd" "/var/run/containerd" "/run/docker" "/var/run/docker" "/run/crio" "/var/run/crio" "/run/k3s" "/var/run/k3s" "/run/systemd" "/var/run/systemd" "/run/user" "/var/run/user" "/run/netns" "/var/run/netns" -}}
{{- range $system -}}
{{- if or (eq $dir .) (hasPrefix (printf "%s/" .) $dir) -}}
{{- fail (printf "agent.socketPath %q: its directory %s is in %s, a directory of the node's system, container runtime or kubelet; the chart hands the socket's directory to the agent's user and workloads mount it, so use a directory of its own, such as /run/sigil/sockets" $path $dir .) -}}
{{- end -}}
{{- end -}}
{{- $inPod := list (include "sigil.agentConfigPath" $ | dir) (include "sigil.bundleDir" $) (include "sigil.agentDataDir" $) "/tmp" (include "sigil.psatTokenDir" $) "/var/run/secrets/kubernetes.io" -}}
{{- range $inPod -}}
{{- if or (eq $dir .) (hasPrefix (printf "%s/" .) $dir) (hasPrefix (printf "%s/" $dir) .) -}}
{{- fail (printf "agent.socketPath %q: its directory %s is, holds or is inside %s, which the agent's pod uses; use a directory of its own, such as /run/sigil/sockets" $path $dir .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The socket directory on the node, and the socket as the agent and workloads see it. */}}
{{- define "sigil.socketHostDir" -}}{{ dir .Values.agent.socketPath }}{{- end -}}
{{- define "sigil.socketMountDir" -}}
{{- if .Values.agent.istioSocket -}}{{ include "sigil.istioSocketDir" . }}{{- else -}}{{ dir .Values.agent.socketPath }}{{- end -}}
{{- end -}}
{{- define "sigil.socketPath" -}}
{{- if .Values.agent.istioSocket -}}{{ include "sigil.istioSocketDir" . }}/socket{{- else -}}{{ .Values.agent.socketPath }}{{- end -}}
{{- end -}}

{{/* Hardened container security context; `root` is the init container's variant. */}}
{{- define "sigil.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: {{ .Values.runAsUser }}
runAsGroup: {{ .Values.runAsGroup }}
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "sigil.podSecurityContext" -}}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The volume-permissions init container: args are <dir>:<mode>:<owner>, owner "user" (runAsUser)
or "root". It changes the mount points only, never what is below them.
*/}}
{{- define "sigil.volumePermissionsContainer" -}}
- name: volume-permissions
  image: {{ include "sigil.image" .root | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy | quote }}
  command:
    - {{ include "sigil.nodeBinary" .root | quote }}
    - -e
    - |
      const fs = require("node:fs");
      const [uid, gid] = [Number(process.env.SIGIL_UID), Number(process.env.SIGIL_GID)];
      for (const spec of process.argv.slice(1)) {
        const [dir, mode, owner] = spec.split(":");
        if (owner === "user") fs.chownSync(dir, uid, gid); else fs.chownSync(dir, 0, 0);
        fs.chmodSync(dir, parseInt(mode, 8));
        console.log(`volume-permissions: ${dir} owned by ${owner === "user" ? uid : 0} with mode ${mode}`);
      }
  args:
    {{- range .dirs }}
    - {{ . | quote }}
    {{- end }}
  env:
    - name: SIGIL_UID
      value: {{ .root.Values.runAsUser | quote }}
    - name: SIGIL_GID
      value: {{ .root.Values.runAsGroup | quote }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: false
    runAsUser: 0
    runAsGroup: 0
    capabilities:
      drop: [ALL]
      add: [CHOWN, FOWNER]
    seccompProfile:
      type: RuntimeDefault
  resources:
    {{- toYaml .root.Values.volumePermissions.resources | nindent 4 }}
  volumeMounts:
    {{- toYaml .mounts | nindent 4 }}
{{- end -}}

{{/* The datastore's connection string, with the password left to --expand-env. */}}
{{- define "sigil.dataStoreConnectionString" -}}
{{- $ds := .Values.server.dataStore -}}
{{- if eq $ds.type "sqlite3" -}}
{{ include "sigil.serverDataDir" . }}/datastore.sqlite3
{{- else -}}
{{- $scheme := ternary "postgresql" "mysql" (eq $ds.type "postgres") -}}
{{ $scheme }}://{{ $ds.external.user }}:${SIGIL_DATASTORE_PASSWORD}@{{ $ds.external.host }}:{{ $ds.external.port }}/{{ $ds.external.database }}{{ if $ds.external.options }}?{{ $ds.external.options }}{{ end }}
{{- end -}}
{{- end -}}

{{/* The server's config file, as the server loads it (server/config/schema.ts). */}}
{{- define "sigil.serverConfig" -}}
{{- $v := .Values -}}
{{- $server := dict
  "trust_domain" $v.trustDomain
  "bind_address" "0.0.0.0"
  "bind_port" $v.server.port
  "data_dir" (include "sigil.serverDataDir" .)
  "log_level" $v.server.logLevel
  "log_format" $v.server.logFormat
  "ca_key_type" $v.server.caKeyType
  "ca_ttl" $v.server.caTTL
  "default_x509_svid_ttl" $v.server.defaultX509SvidTTL
  "default_jwt_svid_ttl" $v.server.defaultJwtSvidTTL
  "audit_log_enabled" $v.server.auditLog
-}}
{{- $subject := dict -}}
{{- with $v.server.caSubject.country }}{{ $_ := set $subject "country" . }}{{ end -}}
{{- with $v.server.caSubject.organization }}{{ $_ := set $subject "organization" . }}{{ end -}}
{{- with $v.server.caSubject.commonName }}{{ $_ := set $subject "common_name" . }}{{ end -}}
{{- if $subject }}{{ $_ := set $server "ca_subject" $subject }}{{ end -}}
{{- with $v.server.jwtIssuer }}{{ $_ := set $server "jwt_issuer" . }}{{ end -}}
{{- $cluster := dict
  "service_account_allow_list" (list (printf "%s:%s" .Release.Namespace (include "sigil.agentServiceAccountName" .)))
  "audience" (list $v.nodeAttestation.audience)
-}}
{{- with $v.nodeAttestation.allowedNodeLabelKeys }}{{ $_ := set $cluster "allowed_node_label_keys" . }}{{ end -}}
{{- with $v.nodeAttestation.allowedPodLabelKeys }}{{ $_ := set $cluster "allowed_pod_label_keys" . }}{{ end -}}
{{- $nodeAttestors := dict "k8s_psat" (dict "clusters" (dict $v.clusterName $cluster)) -}}
{{- if $v.nodeAttestation.joinToken }}{{ $_ := set $nodeAttestors "join_token" (dict) }}{{ end -}}
{{- $config := dict
  "version" "v1"
  "server" $server
  "health_checks" (dict "listener_enabled" true "bind_address" "0.0.0.0" "bind_port" $v.server.healthPort "live_path" "/live" "ready_path" "/ready")
  "plugins" (dict
    "DataStore" (dict "sql" (dict "database_type" $v.server.dataStore.type "connection_string" (include "sigil.dataStoreConnectionString" .)))
    "KeyManager" (dict "disk" (dict "keys_path" (printf "%s/keys.json" (include "sigil.serverDataDir" .))))
    "NodeAttestor" $nodeAttestors)
-}}
{{- $notifier := dict "namespace" .Release.Namespace "config_map" (include "sigil.bundleConfigMapName" .) "config_map_key" "bundle.crt" -}}
{{- with $v.bundleConfigMap.webhookLabel }}{{ $_ := set $notifier "webhook_label" . }}{{ end -}}
{{- with $v.bundleConfigMap.apiServiceLabel }}{{ $_ := set $notifier "api_service_label" . }}{{ end -}}
{{- $_ := set $config.plugins "Notifier" (dict "k8sbundle" $notifier) -}}
{{- if $v.controllerManager.enabled }}
{{- $_ := set $config "k8s_controller" (dict
  "enabled" true
  "cluster" $v.clusterName
  "class_name" $v.controllerManager.className
  "default_cluster_spiffe_id" $v.controllerManager.defaultClusterSPIFFEID
  "ignore_namespaces" $v.controllerManager.ignoreNamespaces
  "resync_interval" $v.controllerManager.resyncInterval) -}}
{{- end -}}
{{- if $v.server.metrics.enabled }}{{ $_ := set $config "telemetry" (dict "prometheus" (dict "host" "0.0.0.0" "port" $v.server.metrics.port)) }}{{ end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The agent's config file, as the agent loads it (agent/config/schema.ts), read with --expand-env. */}}
{{- define "sigil.agentConfig" -}}
{{- $v := .Values -}}
{{- $k8s := dict
  "kubelet_host" "${MY_NODE_IP}"
  "kubelet_secure_port" $v.agent.kubelet.port
  "skip_kubelet_verification" $v.agent.kubelet.skipVerification
  "node_name_env" "MY_NODE_NAME"
-}}
{{- $workloadAttestors := dict "k8s" $k8s -}}
{{- if $v.agent.unixAttestor }}{{ $_ := set $workloadAttestors "unix" (dict) }}{{ end -}}
{{- $config := dict
  "version" "v1"
  "agent" (dict
    "trust_domain" $v.trustDomain
    "server_address" (printf "%s.%s.svc" (include "sigil.serverName" .) .Release.Namespace)
    "server_port" $v.server.port
    "socket_path" (include "sigil.socketPath" .)
    "data_dir" (printf "%s/agent" (include "sigil.agentDataDir" .))
    "log_level" $v.agent.logLevel
    "log_format" $v.agent.logFormat
    "trust_bundle_path" (printf "%s/bundle.crt" (include "sigil.bundleDir" .))
    "trust_bundle_format" "pem"
    "sync_interval" $v.agent.syncInterval
    "workload_attestation_timeout" $v.agent.workloadAttestationTimeout)
  "health_checks" (dict "listener_enabled" true "bind_address" "0.0.0.0" "bind_port" $v.agent.healthPort "live_path" "/live" "ready_path" "/ready")
  "plugins" (dict
    "NodeAttestor" (dict "k8s_psat" (dict "cluster" $v.clusterName "token_path" (printf "%s/%s" (include "sigil.psatTokenDir" .) (include "sigil.psatTokenFile" .))))
    "WorkloadAttestor" $workloadAttestors)
-}}
{{- if $v.agent.metrics.enabled }}{{ $_ := set $config "telemetry" (dict "prometheus" (dict "host" "0.0.0.0" "port" $v.agent.metrics.port)) }}{{ end -}}
{{- toYaml $config -}}
{{- end -}}
