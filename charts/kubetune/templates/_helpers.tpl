{{/* Names, labels and the operator's permissions, shared by every template. */}}

{{- define "kubetune.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetune.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; each adds its app.kubernetes.io/component. */}}
{{- define "kubetune.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kubetune.labels" -}}
{{ include "kubetune.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The claim storage.default names ("" when it is not pvc://). */}}
{{- define "kubetune.storageClaim" -}}
{{- if hasPrefix "pvc://" .Values.storage.default -}}
{{- .Values.storage.default | trimPrefix "pvc://" | trimAll "/" | splitList "/" | first -}}
{{- end -}}
{{- end -}}

{{/*
What the operator does in the namespaces it serves, and nothing more (a Role or a ClusterRole
holds these rules). Derived from kubetune.controller (api_client, handlers, peering):
- finetunejobs: kopf lists and watches them (event handlers only: it writes nothing on them);
  the operator reads each job fresh and deletes a finished one (ttlSecondsAfterFinished).
  A FineTuneSweep's trials are FineTuneJobs: the operator creates them, patches a trial's
  spec.runtime.suspend to stop it (pruned), deletes one its study does not know.
- finetunesweeps: kopf lists and watches them and patches its annotations; the operator reads
  each sweep fresh (also for finetunejob://SWEEP/best).
- finetunesweeps/status: the operator writes a sweep's status.
- finetunejobs/status: the operator writes status. It also creates, per job, a Role granting
  get + patch on that job's status to the trainer; Kubernetes only lets it grant what it holds
  itself, hence get here.
- jobs (and rayjobs with KubeRay): the launcher of each attempt; watched (kopf on.event),
  listed by label, created, deleted (new attempt, suspend, deadline).
- configmaps, services, serviceaccounts, roles, rolebindings: the other children of an
  attempt; listed by label, read when adopting after a crash, created, deleted.
- events: kopf's and the operator's events on FineTuneJobs; listed (by the launcher's name)
  when a launcher has no pod after the grace: the Job controller's FailedCreate says why.
- pods, list only: the pods of a failed launcher or export stage, for the reason in their
  termination message (bad data names the file and row), and a launcher's pods that have not
  run within the grace, for the scheduler's word.
No Secrets: pods reference them by name (secretKeyRef); the operator never reads one.
*/}}
{{- define "kubetune.namespacedRules" -}}
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [get, patch]
- apiGroups: [kubetune.io]
  resources: [finetunesweeps]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [finetunesweeps/status]
  verbs: [patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [ray.io]
  resources: [rayjobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, create, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, create, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- if and .Values.highAvailability.enabled .Values.watchNamespace }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/*
Cluster-scoped reads: kopf watches CustomResourceDefinitions (it starts serving RayJobs when
KubeRay is installed later) and the operator reads rayjobs.ray.io to pick a launcher. Serving
one namespace, kopf also lists and watches Namespaces (to notice it deleted or re-created;
without it kopf retries for about a minute before it starts watching). Plus the
ClusterKopfPeering of a cluster-wide HA pair.
*/}}
{{- define "kubetune.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- if .Values.watchNamespace }}
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
{{- if and .Values.highAvailability.enabled (not .Values.watchNamespace) }}
- apiGroups: [kopf.dev]
  resources: [clusterkopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{/* The studio (optional): names and labels. */}}
{{- define "kubetune.studio.fullname" -}}
{{- printf "%s-studio" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetune.studio.labels" -}}
{{ include "kubetune.baseLabels" . }}
app.kubernetes.io/component: studio
{{- end -}}

{{- define "kubetune.studio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: studio
{{- end -}}

{{- define "kubetune.studio.serviceAccountName" -}}
{{- if .Values.studio.serviceAccount.create -}}
{{- default (include "kubetune.studio.fullname" .) .Values.studio.serviceAccount.name -}}
{{- else -}}
{{- required "studio.serviceAccount.name is required when studio.serviceAccount.create is false" .Values.studio.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.studio.image" -}}
{{- with .Values.studio.image -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kubetune.studio.postgresql.fullname" -}}
{{- printf "%s-studio-postgresql" (include "kubetune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubetune.studio.postgresql.labels" -}}
{{ include "kubetune.baseLabels" . }}
app.kubernetes.io/component: studio-postgresql
{{- end -}}

{{- define "kubetune.studio.postgresql.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: studio-postgresql
{{- end -}}

{{/* The Secret holding the bundled PostgreSQL's password (given, or made by the chart). */}}
{{- define "kubetune.studio.postgresql.secretName" -}}
{{- default (include "kubetune.studio.postgresql.fullname" .) .Values.studio.postgresql.auth.existingSecret -}}
{{- end -}}

{{/* KUBETUNE_STUDIO_DATABASE_URL: from the given Secret, or built for the bundled PostgreSQL
(its password from that one's Secret, through Kubernetes' $(VAR) expansion). */}}
{{- define "kubetune.studio.databaseEnv" -}}
{{- if .Values.studio.database.existingSecret -}}
- name: KUBETUNE_STUDIO_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.studio.database.existingSecret }}
      key: {{ .Values.studio.database.existingSecretKey }}
{{- else -}}
- name: KUBETUNE_STUDIO_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "kubetune.studio.postgresql.secretName" . }}
      key: password
- name: KUBETUNE_STUDIO_DATABASE_URL
  value: {{ printf "postgresql://studio:$(KUBETUNE_STUDIO_DB_PASSWORD)@%s:5432/studio" (include "kubetune.studio.postgresql.fullname" .) | quote }}
{{- end -}}
{{- end -}}
