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

/** The status of the container with runtime ID `containerId` in `pod`, app or init container. */
export function findContainerStatus(pod: V1Pod, containerId: string): { readonly status: V1ContainerStatus; readonly init: boolean } | undefined {
  for (const [list, init] of [
    [pod.status?.containerStatuses, false],
    [pod.status?.initContainerStatuses, true],
  ] as const) {
    for (const status of list ?? []) {
      if (containerIdOfStatus(status.containerID) === containerId) return { status, init };
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
