/**
 * The `k8s:` selectors of a container in a pod, with SPIRE's names and
 * meanings, from the pod as the kubelet lists it.
 */
import type { V1ContainerStatus, V1Pod } from "@kubernetes/client-node";
import { makeSelector, type Selector } from "../../../common/selector.js";

/** Selector type of the `k8s` workload attestor. */
export const K8S_SELECTOR_TYPE = "k8s";

/** `containerd://<id>`, `cri-o://<id>`, `docker://<id>` → `<id>`. */
export function containerIdOfStatus(containerID: string | undefined): string | undefined {
  if (containerID === undefined || containerID === "") return undefined;
  const sep = containerID.indexOf("://");
  return sep < 0 ? containerID : containerID.slice(sep + 3);
}

/** A container status of a pod, and whether it is an init container's. */
export interface FoundContainer {
  readonly status: V1ContainerStatus;
  readonly init: boolean;
}

/**
 * Every status (app or init container) of `pod` whose runtime ID is
 * `containerId`. A kubelet lists one; more than one is an answer no
 * container's selectors can be chosen from.
 */
export function findContainerStatuses(pod: V1Pod, containerId: string): FoundContainer[] {
  const found: FoundContainer[] = [];
  for (const [list, init] of [
    [pod.status?.containerStatuses, false],
    [pod.status?.initContainerStatuses, true],
  ] as const) {
    for (const status of list ?? []) {
      if (containerIdOfStatus(status.containerID) === containerId) found.push({ status, init });
    }
  }
  return found;
}

/**
 * The status of the ephemeral container (`kubectl debug`) of `pod` whose
 * runtime ID is `containerId`, if any. Such a container is added to a
 * running pod by whoever may update `pods/ephemeralcontainers`, with any
 * image: it is given no identity of the pod's.
 */
export function findEphemeralContainerStatus(pod: V1Pod, containerId: string): V1ContainerStatus | undefined {
  return (pod.status?.ephemeralContainerStatuses ?? []).find((s) => containerIdOfStatus(s.containerID) === containerId);
}

/** The status of the container with runtime ID `containerId` in `pod`, app or init container (the first, if listed twice). */
export function findContainerStatus(pod: V1Pod, containerId: string): FoundContainer | undefined {
  return findContainerStatuses(pod, containerId)[0];
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const absent = (v: unknown): boolean => v === undefined || v === null;

/**
 * What is wrong with `pod`'s shape in the fields the selectors are made of,
 * or undefined when every one is absent or of its type. The JSON comes from
 * the kubelet and is not checked on the way in: a number where a string
 * belongs would become part of a selector as its text, a list would be read
 * as a record.
 */
export function podShapeProblem(pod: unknown): string | undefined {
  if (!isObject(pod)) return "it is not an object";
  const strings = (where: string, o: Record<string, unknown>, keys: readonly string[]): string | undefined => {
    for (const k of keys) if (!absent(o[k]) && typeof o[k] !== "string") return `${where}.${k} is not a string`;
    return undefined;
  };
  const objectAt = (where: string, v: unknown): Record<string, unknown> | string | undefined => (absent(v) ? undefined : isObject(v) ? v : `${where} is not an object`);
  const md = objectAt("metadata", pod.metadata);
  if (typeof md === "string") return md;
  if (md !== undefined) {
    const p = strings("metadata", md, ["namespace", "name", "uid"]);
    if (p !== undefined) return p;
    const labels = objectAt("metadata.labels", md.labels);
    if (typeof labels === "string") return labels;
    for (const [k, v] of Object.entries(labels ?? {})) if (typeof v !== "string") return `metadata.labels[${JSON.stringify(k)}] is not a string`;
    if (!absent(md.ownerReferences)) {
      if (!Array.isArray(md.ownerReferences)) return "metadata.ownerReferences is not a list";
      for (const [i, o] of md.ownerReferences.entries()) {
        if (!isObject(o)) return `metadata.ownerReferences[${i}] is not an object`;
        const p2 = strings(`metadata.ownerReferences[${i}]`, o, ["kind", "name", "uid"]);
        if (p2 !== undefined) return p2;
      }
    }
  }
  const spec = objectAt("spec", pod.spec);
  if (typeof spec === "string") return spec;
  if (spec !== undefined) {
    const p = strings("spec", spec, ["serviceAccountName", "nodeName"]);
    if (p !== undefined) return p;
  }
  const status = objectAt("status", pod.status);
  if (typeof status === "string") return status;
  for (const key of ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"] as const) {
    const list = status?.[key];
    if (absent(list)) continue;
    if (!Array.isArray(list)) return `status.${key} is not a list`;
    for (const [i, c] of list.entries()) {
      if (!isObject(c)) return `status.${key}[${i}] is not an object`;
      const p = strings(`status.${key}[${i}]`, c, ["name", "image", "imageID", "containerID"]);
      if (p !== undefined) return p;
    }
  }
  return undefined;
}

/** Image name and image ID (digest) of each status, without empties or repeats: an entry may name either. */
function imageIdentifiers(statuses: readonly V1ContainerStatus[]): string[] {
  const out = new Set<string>();
  for (const s of statuses) {
    if (s.image) out.add(s.image);
    if (s.imageID) out.add(s.imageID);
  }
  return [...out];
}

/**
 * Every selector for the container `status` of `pod`:
 * `ns`, `sa`, `pod-name`, `pod-uid`, `node-name`, `pod-label:<k>:<v>`,
 * `pod-owner:<kind>:<name>`, `pod-owner-uid:<kind>:<uid>`, `pod-image` (image
 * and image ID of every app container), `pod-image-count`, `pod-init-image`,
 * `pod-init-image-count`, `container-name`, `container-image` (its image and
 * image ID). Empty fields give no selector.
 */
export function podSelectors(pod: V1Pod, status: V1ContainerStatus): Selector[] {
  const values: string[] = [];
  const add = (name: string, value: string | undefined): void => {
    if (value !== undefined && value !== "") values.push(`${name}:${value}`);
  };
  const md = pod.metadata;
  add("ns", md?.namespace);
  add("sa", pod.spec?.serviceAccountName);
  add("pod-name", md?.name);
  add("pod-uid", md?.uid);
  add("node-name", pod.spec?.nodeName);
  for (const [k, v] of Object.entries(md?.labels ?? {})) values.push(`pod-label:${k}:${v}`);
  for (const o of md?.ownerReferences ?? []) {
    add("pod-owner", `${o.kind}:${o.name}`);
    add("pod-owner-uid", `${o.kind}:${o.uid}`);
  }
  const app = pod.status?.containerStatuses ?? [];
  const init = pod.status?.initContainerStatuses ?? [];
  for (const image of imageIdentifiers(app)) add("pod-image", image);
  add("pod-image-count", String(app.length));
  for (const image of imageIdentifiers(init)) add("pod-init-image", image);
  add("pod-init-image-count", String(init.length));
  add("container-name", status.name);
  for (const image of imageIdentifiers([status])) add("container-image", image);
  return values.map((v) => makeSelector(K8S_SELECTOR_TYPE, v));
}
