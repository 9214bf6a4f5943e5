/**
 * Real cgroups in the kubelet's layouts, for tests of the `k8s` workload
 * attestor: makes a pod's container cgroup in the hierarchies a layout uses,
 * moves real processes into it by writing their pids to `cgroup.procs`, and
 * removes it afterwards (processes still inside are moved back to the root
 * first, then its directories and then its parents, once empty, deepest first).
 *
 * Needs root and this machine's hybrid mount: v1 controllers under
 * `/sys/fs/cgroup/<controller>/` (`pids`, `cpu`; the `name=systemd`
 * hierarchy at `systemd/`) and v2 at `/sys/fs/cgroup/unified/`. The
 * attestor reads a layout only from the root of a hierarchy, so the `kubepods`
 * parents are shared by concurrent tests: each test uses its own pod UID and
 * container ID, and a parent is removed only once empty.
 */
import { randomUUID } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from "node:fs";
import path from "node:path";
import { randomContainerId } from "./kubelet.js";

const CGROUP_ROOT = "/sys/fs/cgroup";

/** A kubelet cgroup layout: the hierarchies it uses and the path of a container in it. */
export interface CgroupLayout {
  readonly name: string;
  /** Mount directories under /sys/fs/cgroup. */
  readonly hierarchies: readonly string[];
  /** The runtime, as the kubelet's `containerID` prefix names it. */
  readonly runtime: "containerd" | "cri-o" | "docker";
  /** The container's cgroup path (relative to each hierarchy's root). */
  containerPath(podUid: string, containerId: string): string;
}

const sd = (uid: string): string => uid.replace(/-/g, "_");

/** One layout per driver, runtime and cgroup version the attestor supports. */
export const CGROUP_LAYOUTS: readonly CgroupLayout[] = [
  { name: "v1 cgroupfs, containerd (burstable)", hierarchies: ["pids", "cpu"], runtime: "containerd", containerPath: (u, c) => `kubepods/burstable/pod${u}/${c}` },
  {
    name: "v1 systemd, containerd (burstable)",
    hierarchies: ["pids", "cpu", "systemd"],
    runtime: "containerd",
    containerPath: (u, c) => `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sd(u)}.slice/cri-containerd-${c}.scope`,
  },
  {
    name: "v2 systemd, containerd (besteffort)",
    hierarchies: ["unified"],
    runtime: "containerd",
    containerPath: (u, c) => `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod${sd(u)}.slice/cri-containerd-${c}.scope`,
  },
  { name: "v2 systemd, CRI-O (guaranteed)", hierarchies: ["unified"], runtime: "cri-o", containerPath: (u, c) => `kubepods.slice/kubepods-pod${sd(u)}.slice/crio-${c}.scope` },
  {
    name: "v1 systemd, Docker (burstable)",
    hierarchies: ["pids", "systemd"],
    runtime: "docker",
    containerPath: (u, c) => `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${sd(u)}.slice/docker-${c}.scope`,
  },
  { name: "v2 cgroupfs, containerd (guaranteed)", hierarchies: ["unified"], runtime: "containerd", containerPath: (u, c) => `kubepods/pod${u}/${c}` },
];

/**
 * Whether real cgroups can be made here; otherwise why not. Checks root and
 * that a directory can be made in every hierarchy the layouts use.
 */
export function cgroupsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return "creating cgroups and moving processes needs root";
  const probe = `sigil-probe-${randomUUID()}`;
  for (const h of new Set(CGROUP_LAYOUTS.flatMap((l) => l.hierarchies))) {
    const dir = path.join(CGROUP_ROOT, h);
    if (!existsSync(path.join(dir, "cgroup.procs"))) return `no cgroup hierarchy mounted at ${dir}`;
    try {
      mkdirSync(path.join(dir, probe));
      rmdirSync(path.join(dir, probe));
    } catch (e) {
      return `cannot create a cgroup in ${dir}: ${(e as Error).message}`;
    }
  }
  return undefined;
}

/** A pod container's cgroup, made in every hierarchy of its layout. */
export interface ContainerCgroup {
  readonly podUid: string;
  readonly containerId: string;
  /** Moves the process into the container's cgroup in every hierarchy. */
  add(pid: number): void;
  /** Moves any process still inside back to the root, then removes what was made (parents only once empty). */
  remove(): void;
}

/**
 * Makes `parts` under `base` one level at a time. A parent that a concurrent
 * test removes between two levels (it was empty for an instant) is made again.
 */
function makeDirs(base: string, parts: readonly string[]): void {
  for (let attempt = 0; ; attempt++) {
    try {
      let dir = base;
      for (const p of parts) {
        dir = path.join(dir, p);
        try {
          mkdirSync(dir);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        }
      }
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT" || attempt >= 10) throw e;
    }
  }
}

/**
 * Makes the cgroup of a new container (random pod UID and container ID unless
 * given) in `layout`.
 *
 * @example
 * ```ts
 * const cg = createContainerCgroup(CGROUP_LAYOUTS[0]);
 * try { cg.add(child.pid); … } finally { cg.remove(); }
 * ```
 */
export function createContainerCgroup(layout: CgroupLayout, ids: { podUid?: string; containerId?: string } = {}): ContainerCgroup {
  const podUid = ids.podUid ?? randomUUID();
  const containerId = ids.containerId ?? randomContainerId();
  const rel = layout.containerPath(podUid, containerId);
  const parts = rel.split("/");
  const leaves = layout.hierarchies.map((h) => path.join(CGROUP_ROOT, h, rel));
  // Every level of the path, in every hierarchy, deepest first: what remove() takes away once empty.
  const levels = layout.hierarchies.flatMap((h) => parts.map((_, i) => path.join(CGROUP_ROOT, h, ...parts.slice(0, i + 1)))).sort((a, b) => b.length - a.length);
  try {
    for (const h of layout.hierarchies) makeDirs(path.join(CGROUP_ROOT, h), parts);
  } catch (e) {
    removeDirs(levels);
    throw e;
  }
  return {
    podUid,
    containerId,
    add(pid) {
      for (const leaf of leaves) writeFileSync(path.join(leaf, "cgroup.procs"), String(pid));
    },
    remove() {
      for (const [i, leaf] of leaves.entries()) {
        const root = path.join(CGROUP_ROOT, layout.hierarchies[i] as string);
        let pids: string[] = [];
        try {
          pids = readFileSync(path.join(leaf, "cgroup.procs"), "utf8").split("\n").filter(Boolean);
        } catch {
          continue;
        }
        for (const pid of pids) {
          try {
            writeFileSync(path.join(root, "cgroup.procs"), pid);
          } catch {
            // exited meanwhile
          }
        }
      }
      removeDirs(levels);
    },
  };
}

/** Removes directories (given deepest first); a parent another test still uses (not empty) stays. */
function removeDirs(dirs: readonly string[]): void {
  for (const dir of dirs) {
    try {
      rmdirSync(dir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "EBUSY" && code !== "ENOTEMPTY") throw e;
    }
  }
}
