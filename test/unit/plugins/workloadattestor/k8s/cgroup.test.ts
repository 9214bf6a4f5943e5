/**
 * The cgroup parser of the `k8s` workload attestor: every layout the kubelet
 * makes gives the pod UID and container ID; lookalikes an unprivileged user or
 * a container can create give nothing or an error, never another pod.
 */
import { describe, expect, it } from "vitest";
import { parseCgroupPath, parseProcCgroup } from "../../../../../plugins/workloadattestor/k8s/cgroup.js";

const UID = "2c48913c-b29f-11e7-9350-020968147796";
const UID_ = UID.replace(/-/g, "_");
const CID = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
const OTHER_UID = "0d3e7b5a-4a1f-4c6e-9f2b-8e1d2c3b4a59";
const OTHER_CID = "aaaa8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961";
const REF = { podUid: UID, containerId: CID };

function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    return (e as Error).message;
  }
  throw new Error("expected an error");
}

describe("k8s cgroup parser: layouts", () => {
  it.each([
    ["v1 cgroupfs burstable", `/kubepods/burstable/pod${UID}/${CID}`],
    ["v1 cgroupfs besteffort", `/kubepods/besteffort/pod${UID}/${CID}`],
    ["cgroupfs guaranteed (no QoS level)", `/kubepods/pod${UID}/${CID}`],
    ["cgroupfs CRI-O", `/kubepods/burstable/pod${UID}/crio-${CID}`],
    ["systemd containerd burstable", `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/cri-containerd-${CID}.scope`],
    ["systemd containerd besteffort", `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice/cri-containerd-${CID}.scope`],
    ["systemd guaranteed", `/kubepods.slice/kubepods-pod${UID_}.slice/cri-containerd-${CID}.scope`],
    ["systemd CRI-O", `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/crio-${CID}.scope`],
    ["systemd Docker", `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${UID_}.slice/docker-${CID}.scope`],
    ["a cgroup the container made below its own", `/kubepods/burstable/pod${UID}/${CID}/init.scope`],
    ["cgroup namespace, common ancestor kubepods.slice", `/../../kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/cri-containerd-${CID}.scope`],
    ["cgroup namespace, same QoS slice", `/../../kubepods-burstable-pod${UID_}.slice/cri-containerd-${CID}.scope`],
    ["cgroup namespace, cgroupfs", `/../../../burstable/pod${UID}/${CID}`],
  ])("%s", (_name, p) => {
    expect(parseCgroupPath(p)).toEqual({ kind: "pod", ref: REF });
  });

  it("a static pod's UID (the kubelet's 32-hex config hash)", () => {
    const hash = "6f3b2a1c9d8e7f605142332415161718";
    expect(parseProcCgroup(`0::/kubepods/besteffort/pod${hash}/${CID}\n`)).toEqual({ podUid: hash, containerId: CID });
  });

  it("cgroup v1: every hierarchy agreeing, with `name=systemd` and a controller the runtime left alone", () => {
    const p = `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/cri-containerd-${CID}.scope`;
    const text = [`12:pids:${p}`, `11:cpu,cpuacct:${p}`, "10:memory:/system.slice/containerd.service", `1:name=systemd:${p}`, "0::/", ""].join("\n");
    expect(parseProcCgroup(text)).toEqual(REF);
  });

  it("cgroup v2: one line", () => {
    expect(parseProcCgroup(`0::/kubepods.slice/kubepods-pod${UID_}.slice/cri-containerd-${CID}.scope\n`)).toEqual(REF);
  });
});

describe("k8s cgroup parser: not in a pod", () => {
  it.each([
    ["a host process", "12:pids:/system.slice/sshd.service\n1:name=systemd:/system.slice/sshd.service\n0::/system.slice/sshd.service\n"],
    ["the root cgroup", "0::/\n"],
    ["kubepods itself", "0::/kubepods\n"],
    ["a QoS level", "0::/kubepods.slice/kubepods-burstable.slice\n"],
    ["a word 'pod' elsewhere in the path", "0::/system.slice/podman-1234.scope\n"],
    ["a podcast service", `0::/user.slice/podcast/pod${UID}/${CID}\n`],
    ["empty file", ""],
  ])("%s: no pod, no error", (_name, text) => {
    expect(parseProcCgroup(text)).toBeUndefined();
  });

  it("a lookalike made in a user's systemd-delegated subtree is not a pod (the layout must start at the root)", () => {
    const user = "/user.slice/user-1000.slice/user@1000.service";
    expect(parseProcCgroup(`0::${user}/kubepods/burstable/pod${UID}/${CID}\n`)).toBeUndefined();
    expect(parseProcCgroup(`0::${user}/kubepods.slice/kubepods-pod${UID_}.slice/cri-containerd-${CID}.scope\n`)).toBeUndefined();
    // The same through a cgroup namespace: the segment after the '..'s is user.slice.
    expect(parseProcCgroup(`0::/../../../..${user}/kubepods-pod${UID_}.slice/cri-containerd-${CID}.scope\n`)).toBeUndefined();
  });
});

describe("k8s cgroup parser: hostile and malformed lines", () => {
  it("a container that names cgroups below its own after another pod is still its own pod and container", () => {
    const own = `/kubepods/burstable/pod${UID}/${CID}`;
    expect(parseProcCgroup(`0::${own}/kubepods/pod${OTHER_UID}/${OTHER_CID}\n`)).toEqual(REF);
    expect(parseProcCgroup(`0::${own}/pod${OTHER_UID}/${OTHER_CID}\n`)).toEqual(REF);
    const sd = `/kubepods.slice/kubepods-pod${UID_}.slice/cri-containerd-${CID}.scope`;
    expect(parseProcCgroup(`0::${sd}/kubepods-pod${OTHER_UID.replace(/-/g, "_")}.slice/cri-containerd-${OTHER_CID}.scope\n`)).toEqual(REF);
  });

  it("hierarchies that disagree about the pod or the container fail, naming both lines", () => {
    const a = `/kubepods/burstable/pod${UID}/${CID}`;
    const otherPod = `/kubepods/burstable/pod${OTHER_UID}/${CID}`;
    const otherContainer = `/kubepods/burstable/pod${UID}/${OTHER_CID}`;
    expect(errorOf(() => parseProcCgroup(`12:pids:${a}\n11:cpu:${otherPod}\n`))).toBe(
      `workloadattestor(k8s): cgroup hierarchies disagree about the caller's pod/container: "12:pids:${a}" and "11:cpu:${otherPod}"`,
    );
    expect(errorOf(() => parseProcCgroup(`12:pids:${a}\n0::${otherContainer}\n`))).toContain("disagree");
    // The same pod and container in both drivers' spelling is agreement.
    expect(parseProcCgroup(`12:pids:${a}\n1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID_}.slice/cri-containerd-${CID}.scope\n`)).toEqual(REF);
  });

  it.each([
    ["a too-short container ID", `/kubepods/burstable/pod${UID}/${CID.slice(0, 12)}`, "is not a container cgroup"],
    ["a too-long container ID", `/kubepods/burstable/pod${UID}/${CID}ab`, "is not a container cgroup"],
    ["an ID with non-hex characters", `/kubepods/burstable/pod${UID}/${CID.slice(0, 63)}g`, "is not a container cgroup"],
    ["CRI-O's conmon scope", `/kubepods.slice/kubepods-pod${UID_}.slice/crio-conmon-${CID}.scope`, "is not a container cgroup"],
    ["the pod cgroup itself", `/kubepods/burstable/pod${UID}`, "is a pod's cgroup, not one of its containers"],
    ["a pod segment that is not a UID", "/kubepods/burstable/podxyz/" + CID, "is not a pod cgroup"],
    ["a short pod UID", `/kubepods/burstable/pod${UID.slice(0, 30)}/${CID}`, "is not a pod cgroup"],
    ["systemd slice with '-' in the UID", `/kubepods.slice/kubepods-pod${UID}.slice/cri-containerd-${CID}.scope`, `writes the pod UID with "_"`],
    ["cgroupfs with '_' in the UID", `/kubepods/pod${UID_}/${CID}`, `writes the pod UID with "-"`],
    ["a systemd container without .scope", `/kubepods.slice/kubepods-pod${UID_}.slice/cri-containerd-${CID}`, "is not a container cgroup"],
  ])("%s: fails (the caller is in a pod; guessing the container would be wrong)", (_name, p, message) => {
    expect(errorOf(() => parseProcCgroup(`0::${p}\n`))).toContain(message);
  });

  it("a line without the hierarchy:controllers:path form fails", () => {
    expect(errorOf(() => parseProcCgroup("garbage\n"))).toBe('workloadattestor(k8s): malformed /proc cgroup line "garbage"');
  });
});
