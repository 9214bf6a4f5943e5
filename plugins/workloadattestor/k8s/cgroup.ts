/**
 * Which pod and container a process belongs to, from the text of its
 * `/proc/<pid>/cgroup`. Pure: no I/O, so every layout is unit-tested.
 *
 * The kubelet puts each pod's containers in cgroups it names, in one of two
 * driver styles, on cgroup v1 (one line per hierarchy) or v2 (one `0::` line):
 *
 * - cgroupfs: `/kubepods[/burstable|/besteffort]/pod<uid>/<container>`
 *   (guaranteed pods sit directly under `kubepods`);
 * - systemd: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid>.slice/<container>.scope`,
 *   the pod UID written with `_` for `-` (systemd reserves `-` for nesting);
 *
 * where `<container>` is the runtime's 64-hex container ID, bare
 * (containerd, Docker on cgroupfs) or as `cri-containerd-<id>`, `crio-<id>`,
 * `docker-<id>` (`.scope` under systemd).
 *
 * Anchoring is what makes this safe. A path counts only when the kubelet's
 * layout starts at the root of the hierarchy (`/kubepods…`), or right after
 * leading `..` segments: a cgroup namespace (the agent in a container of its
 * own) shows other cgroups relative to the reader's, and the first segment
 * after the `..`s is then a child of a common ancestor, which is the kubelet's
 * (a QoS slice, the pod) for a real pod. Anywhere else a lookalike could be
 * made without root: systemd delegates `/user.slice/user-<uid>.slice/user@<uid>.service/…`
 * to that user, who may create `…/kubepods/pod<victim>/<victim-id>` there
 * and move into it. And only the first pod/container pair is read: a container
 * allowed to create cgroups below its own may name them after another pod.
 */
import { SigilError } from "../../../spiffe/errors.js";

/** A process's pod and container, from its cgroups. */
export interface PodContainerRef {
  /** The pod UID as the API writes it (with `-`), lowercase. */
  readonly podUid: string;
  /** The runtime's container ID (64 lowercase hex), without any runtime prefix. */
  readonly containerId: string;
}

function cgroupError(message: string): SigilError {
  return new SigilError("ERR_UNAVAILABLE", `workloadattestor(k8s): ${message}`);
}

// A pod UID: a UUID, or the 32-hex config hash the kubelet gives a static pod.
const UID = "[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}|[0-9a-f]{32}";
const QOS = /^(?:burstable|besteffort)$/;
const SYSTEMD_QOS = /^kubepods-(?:burstable|besteffort)\.slice$/;
const CGROUPFS_POD = new RegExp(`^pod(${UID})$`);
const SYSTEMD_POD = new RegExp(`^kubepods(?:-(?:burstable|besteffort))?-pod(${UID})\\.slice$`);
const CONTAINER = /^(?:(?:cri-containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?$/;

/** The result of reading one path: not under kubepods, or the pod/container it names. */
type PathResult = { readonly kind: "none" } | { readonly kind: "pod"; readonly ref: PodContainerRef };

/**
 * Reads one cgroup path. Throws when the path is in the kubelet's layout but
 * names no container (a pod cgroup itself, a malformed or too short ID): the
 * process is in some pod, and guessing which container would be wrong.
 */
export function parseCgroupPath(cgroupPath: string): PathResult {
  const all = cgroupPath.split("/").filter((s) => s !== "");
  let i = 0;
  while (all[i] === "..") i++;
  const relative = i > 0;
  const seg = all.slice(i);
  let k = 0;
  let style: "cgroupfs" | "systemd";
  // Absolute: the layout must begin at the hierarchy's root. Relative: at any step of it.
  if (seg[0] === "kubepods") {
    style = "cgroupfs";
    k = 1;
    if (QOS.test(seg[k] ?? "")) k++;
  } else if (seg[0] === "kubepods.slice") {
    style = "systemd";
    k = 1;
    if (SYSTEMD_QOS.test(seg[k] ?? "")) k++;
  } else if (relative && QOS.test(seg[0] ?? "")) {
    style = "cgroupfs";
    k = 1;
  } else if (relative && SYSTEMD_QOS.test(seg[0] ?? "")) {
    style = "systemd";
    k = 1;
  } else if (relative && CGROUPFS_POD.test(seg[0] ?? "")) {
    style = "cgroupfs";
  } else if (relative && SYSTEMD_POD.test(seg[0] ?? "")) {
    style = "systemd";
  } else {
    return { kind: "none" };
  }
  const podSeg = seg[k];
  if (podSeg === undefined) return { kind: "none" }; // kubepods or a QoS level itself: no pod
  const pod = (style === "cgroupfs" ? CGROUPFS_POD : SYSTEMD_POD).exec(podSeg);
  if (pod === null) {
    throw cgroupError(`cgroup path ${JSON.stringify(cgroupPath)} is in the kubelet's layout but ${JSON.stringify(podSeg)} is not a pod cgroup`);
  }
  const uidText = (pod[1] as string).replace(/_/g, "-");
  if (style === "systemd" && (pod[1] as string).includes("-")) {
    throw cgroupError(`cgroup path ${JSON.stringify(cgroupPath)}: a systemd pod slice writes the pod UID with "_", not "-"`);
  }
  if (style === "cgroupfs" && (pod[1] as string).includes("_")) {
    throw cgroupError(`cgroup path ${JSON.stringify(cgroupPath)}: a cgroupfs pod cgroup writes the pod UID with "-", not "_"`);
  }
  const containerSeg = seg[k + 1];
  if (containerSeg === undefined) throw cgroupError(`cgroup path ${JSON.stringify(cgroupPath)} is a pod's cgroup, not one of its containers`);
  const container = CONTAINER.exec(containerSeg);
  if (container === null || (style === "systemd") !== containerSeg.endsWith(".scope")) {
    throw cgroupError(`cgroup path ${JSON.stringify(cgroupPath)}: ${JSON.stringify(containerSeg)} is not a container cgroup (expected a 64-hex container ID)`);
  }
  // Segments below the container's cgroup are the container's own: it is still that container.
  return { kind: "pod", ref: { podUid: uidText, containerId: container[1] as string } };
}

/**
 * Finds the pod UID and container ID in the text of `/proc/<pid>/cgroup`.
 * Lines whose path is not in the kubelet's layout are ignored (v1 hierarchies
 * the runtime did not use, the systemd `name=` hierarchy of a host process).
 *
 * @returns undefined when no line puts the process in a pod.
 * @throws SigilError `ERR_UNAVAILABLE` when a line is in the layout but names
 *   no container, or when two lines name different pods or containers.
 *
 * @example
 * ```ts
 * parseProcCgroup("0::/kubepods.slice/kubepods-pod1a2b…_…slice/cri-containerd-<64 hex>.scope\n");
 * // { podUid: "1a2b…-…", containerId: "<64 hex>" }
 * ```
 */
export function parseProcCgroup(text: string): PodContainerRef | undefined {
  let found: PodContainerRef | undefined;
  let foundLine = "";
  for (const line of text.split("\n")) {
    if (line === "") continue;
    // hierarchy-ID:controller-list:path; the path may itself contain ':'.
    const first = line.indexOf(":");
    const second = first < 0 ? -1 : line.indexOf(":", first + 1);
    if (second < 0) throw cgroupError(`malformed /proc cgroup line ${JSON.stringify(line)}`);
    const r = parseCgroupPath(line.slice(second + 1));
    if (r.kind === "none") continue;
    if (found === undefined) {
      found = r.ref;
      foundLine = line;
    } else if (found.podUid !== r.ref.podUid || found.containerId !== r.ref.containerId) {
      throw cgroupError(`cgroup hierarchies disagree about the caller's pod/container: ${JSON.stringify(foundLine)} and ${JSON.stringify(line)}`);
    }
  }
  return found;
}
