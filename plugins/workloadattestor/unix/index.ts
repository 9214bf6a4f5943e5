/**
 * `unix` WorkloadAttestor: selectors from the caller's process, with SPIRE's
 * selector names (`pkg/agent/plugin/workloadattestor/unix`):
 *
 * - `unix:uid`, `unix:gid`: the effective ids the caller **connected with**
 *   (SO_PEERCRED), not what /proc says now. SPIRE reads /proc at call time,
 *   which lets a process that connected unprivileged and then exec'd a setuid
 *   binary be attested as root; here an exec after connecting changes nothing.
 * - `unix:user`, `unix:group`: names of those ids from /etc/passwd and
 *   /etc/group, omitted when the id has no entry (files only: NSS sources such
 *   as LDAP are not consulted).
 * - `unix:supplementary_gid`, `unix:supplementary_group`: every id of the
 *   `Groups:` line of /proc/<pid>/status, with its name when known.
 * - With `discover_workload_path`: `unix:path` and `unix:sha256` (hex SHA-256
 *   of the binary), both from ONE open of /proc/<pid>/exe, so the path and the
 *   hash always describe the same file. `unix:path` is given only when that
 *   path, looked up by the agent, leads to that very file: a caller in another
 *   mount namespace (which any user can make in a user namespace) reports the
 *   path of its own namespace, and a deleted or replaced binary a stale one.
 *   `workload_size_limit` caps the hashing: 0 means no limit, a negative
 *   value never hashes, and a larger binary gets no `unix:sha256` selector
 *   (SPIRE fails the whole attestation instead; here entries that rely on the
 *   hash simply do not match, while uid-based entries still do).
 *
 * Everything read from /proc is trusted only because the agent checks, after
 * all attestors ran, that the caller is still the process that connected and
 * still owned by the uid/gid it connected with (`verifyPeer`).
 */
import { createHash } from "node:crypto";
import { open, readFile, readlink, stat, type FileHandle } from "node:fs/promises";
import path from "node:path";
import { z } from "zod";
import type { Logger } from "../../../common/log.js";
import { makeSelector, MAX_SELECTOR_VALUE_BYTES, type Selector } from "../../../common/selector.js";
import { SigilError } from "../../../spiffe/errors.js";
import type { WorkloadAttestor, WorkloadAttestorDeps, WorkloadCaller } from "../types.js";
import { pluginHalf, type PluginDescriptor } from "../../descriptor.js";

/** Plugin name and selector type. */
export const UNIX_WORKLOAD_ATTESTOR = "unix";

/** Configuration of the `unix` workload attestor (SPIRE's option names). */
export const unixWorkloadAttestorConfigSchema = z.strictObject({
  discover_workload_path: z
    .boolean()
    .optional()
    .describe("Add unix:path and unix:sha256 selectors (the agent must be able to read /proc/<pid>/exe: root or CAP_SYS_PTRACE)."),
  workload_size_limit: z
    .number()
    .int()
    .optional()
    .describe("Largest binary hashed for unix:sha256, in bytes; 0 (default) means no limit, negative never hashes."),
});

/** Parsed configuration of the `unix` workload attestor. */
export type UnixWorkloadAttestorConfig = z.infer<typeof unixWorkloadAttestorConfigSchema>;

/** Where the attestor reads from; tests and containers (SPIRE's HOST_PROC) override them. */
export interface UnixWorkloadAttestorDeps {
  /** The proc filesystem; default `/proc`. */
  readonly procRoot?: string;
  /** Default `/etc/passwd`. */
  readonly passwdPath?: string;
  /** Default `/etc/group`. */
  readonly groupPath?: string;
  /** Receives a warning when a selector is skipped (binary over the size limit, unrepresentable path). */
  readonly log?: Logger;
}

/** What /proc/<pid>/status says about a process's credentials. */
export interface ProcessCredentials {
  /** Effective uid. */
  readonly uid: number;
  /** Effective gid. */
  readonly gid: number;
  /** Supplementary group ids, in the kernel's order. */
  readonly groups: readonly number[];
}

function pluginError(message: string, cause?: unknown): SigilError {
  return new SigilError("ERR_UNAVAILABLE", `workloadattestor(unix): ${message}`, cause === undefined ? undefined : { cause });
}

/**
 * Reads the effective uid/gid and the supplementary groups from the text of
 * /proc/<pid>/status.
 *
 * @throws SigilError `ERR_UNAVAILABLE` when a line is missing or malformed.
 */
export function parseProcStatus(text: string): ProcessCredentials {
  const fields = new Map<string, string>();
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  const ids = (name: string): number[] => {
    const v = fields.get(name);
    if (v === undefined) throw pluginError(`/proc status has no ${name} line`);
    const out = v.length === 0 ? [] : v.split(/\s+/).map(Number);
    if (out.some((n) => !Number.isSafeInteger(n) || n < 0)) throw pluginError(`/proc status ${name} line is malformed: ${JSON.stringify(v)}`);
    return out;
  };
  // Real, effective, saved, filesystem: the effective id is what the process acts as (SPIRE uses it too).
  const effective = (name: string): number => {
    const list = ids(name);
    const id = list.length > 1 ? list[1] : list[0];
    if (id === undefined) throw pluginError(`/proc status ${name} line is empty`);
    return id;
  };
  return { uid: effective("uid"), gid: effective("gid"), groups: fields.has("groups") ? ids("groups") : [] };
}

/** Parses /etc/passwd or /etc/group text into id → name (the first name wins, as getpwuid does). */
export function parseIdNameFile(text: string): Map<number, string> {
  const out = new Map<number, string>();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const parts = line.split(":");
    const name = parts[0];
    const id = Number(parts[2]);
    if (name === undefined || name === "" || !Number.isSafeInteger(id) || parts[2] === "") continue;
    if (!out.has(id)) out.set(id, name);
  }
  return out;
}

/** How long a parsed /etc/passwd or /etc/group is reused: attestation runs per call, names change rarely. */
const ID_NAMES_TTL_MS = 5_000;
const idNamesCache = new Map<string, { at: number; names: Promise<Map<number, string>> }>();

async function readIdNames(file: string): Promise<Map<number, string>> {
  const now = Date.now();
  const hit = idNamesCache.get(file);
  if (hit && now - hit.at < ID_NAMES_TTL_MS) return hit.names;
  const names = readFile(file, "utf8").then(parseIdNameFile, () => new Map<number, string>());
  // No name database (minimal containers): names are simply not emitted, as when an id has no entry.
  idNamesCache.set(file, { at: now, names });
  return names;
}

/** Binary hashes one attestor keeps; the least recently used is dropped beyond this. */
const MAX_KNOWN_HASHES = 1024;

/**
 * SHA-256 of the open binary, read once per file: `known` maps a file's
 * identity (device, inode, size, modification and change times) to its hash,
 * so a binary that many calls run (node, python) is not read and hashed on
 * every call. Writing a file changes its times, and its change time cannot be
 * set by its owner. A file rewritten within one clock tick could keep a stale
 * hash, but only its owner can write it, and its owner could run a file with
 * that hash anyway: `unix:sha256` never separates users who can run the same file.
 */
async function sha256OfHandle(
  handle: FileHandle,
  limit: number,
  signal: AbortSignal | undefined,
  known: Map<string, string>,
  turn: <T>(read: () => Promise<T>) => Promise<T>,
): Promise<{ hex: string } | { tooLarge: number }> {
  const st = await handle.stat({ bigint: true });
  if (limit > 0 && st.size > BigInt(limit)) return { tooLarge: Number(st.size) };
  const key = `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
  const cached = (): { hex: string } | undefined => {
    const hit = known.get(key);
    if (hit === undefined) return undefined;
    known.delete(key);
    known.set(key, hit);
    return { hex: hit };
  };
  // Reading waits for the caller's uid's turn; by then another call may have hashed the same file.
  return cached() ?? (await turn(async () => cached() ?? { hex: await readSha256(handle, signal, key, known) }));
}

async function readSha256(handle: FileHandle, signal: AbortSignal | undefined, key: string, known: Map<string, string>): Promise<string> {
  signal?.throwIfAborted();
  const hash = createHash("sha256");
  for await (const chunk of handle.createReadStream({ autoClose: false, start: 0, ...(signal === undefined ? {} : { signal }) })) {
    hash.update(chunk as Buffer);
  }
  const hex = hash.digest("hex");
  known.set(key, hex);
  if (known.size > MAX_KNOWN_HASHES) known.delete(known.keys().next().value as string);
  return hex;
}

/**
 * Runs reads one at a time per uid: a user whose calls each need a large
 * binary hashed (one it keeps touching, so no hash is ever reused) queues
 * behind itself instead of taking every thread of the pool from other users'
 * attestations.
 */
export function createHashTurns(): (uid: number) => <T>(read: () => Promise<T>) => Promise<T> {
  const tails = new Map<number, Promise<void>>();
  return (uid) => async (read) => {
    const before = tails.get(uid) ?? Promise.resolve();
    let done!: () => void;
    const mine = new Promise<void>((resolve) => (done = resolve));
    const tail = before.then(() => mine);
    tails.set(uid, tail);
    try {
      await before;
      return await read();
    } finally {
      done();
      if (tails.get(uid) === tail) tails.delete(uid);
    }
  };
}

/**
 * True when `file`, looked up in the agent's own mount namespace, is the file
 * open in `handle`. The name of an open file is its path in the namespace of
 * whoever opened it: a caller in a mount namespace of its own (any user may
 * make one inside a user namespace) can put any program at any path there.
 */
async function sameFile(handle: FileHandle, file: string): Promise<boolean> {
  try {
    const [opened, named] = await Promise.all([handle.stat({ bigint: true }), stat(file, { bigint: true })]);
    return opened.dev === named.dev && opened.ino === named.ino;
  } catch {
    return false;
  }
}

/**
 * Creates the `unix` workload attestor.
 *
 * @example
 * ```ts
 * const unix = createUnixWorkloadAttestor({ discover_workload_path: true }, { log });
 * await unix.attest({ pid, uid, gid }); // [unix:uid:1000, unix:user:web, unix:gid:1000, …, unix:path:/usr/bin/web, unix:sha256:…]
 * ```
 */
export function createUnixWorkloadAttestor(config: UnixWorkloadAttestorConfig = {}, deps: UnixWorkloadAttestorDeps = {}): WorkloadAttestor {
  const procRoot = deps.procRoot ?? "/proc";
  const passwdPath = deps.passwdPath ?? "/etc/passwd";
  const groupPath = deps.groupPath ?? "/etc/group";
  const discoverPath = config.discover_workload_path ?? false;
  const sizeLimit = config.workload_size_limit ?? 0;
  const sel = (value: string): Selector => makeSelector(UNIX_WORKLOAD_ATTESTOR, value);
  const knownHashes = new Map<string, string>();
  const hashTurn = createHashTurns();

  /** `unix:path` and `unix:sha256` from one open of the caller's binary, so both name the same file. */
  async function binarySelectors(pid: number, uid: number, exeLink: string, signal: AbortSignal | undefined): Promise<Selector[]> {
    let handle: FileHandle;
    try {
      handle = await open(exeLink, "r");
    } catch (e) {
      throw pluginError(`cannot open the binary of pid ${pid}: ${(e as Error).message}`, e);
    }
    try {
      const out: Selector[] = [];
      let exe: string;
      try {
        exe = await readlink(`/proc/self/fd/${handle.fd}`);
      } catch (e) {
        throw pluginError(`cannot read the binary path of pid ${pid}: ${(e as Error).message}`, e);
      }
      const pathValue = `path:${exe}`;
      // A path the selector grammar cannot carry gets no selector; entries cannot name it either.
      if (Buffer.byteLength(pathValue) > MAX_SELECTOR_VALUE_BYTES || /[\u0000-\u001f\u007f-\u009f]/.test(exe)) {
        deps.log?.warn({ pid }, "workloadattestor(unix): binary path cannot be a selector; unix:path omitted");
      } else if (!(await sameFile(handle, exe))) {
        deps.log?.warn(
          { pid, path: exe },
          "workloadattestor(unix): the binary's path does not lead to the caller's binary for the agent (another mount namespace, or the file was replaced or deleted); unix:path omitted",
        );
      } else {
        out.push(sel(pathValue));
      }
      if (sizeLimit < 0) return out;
      let digest: { hex: string } | { tooLarge: number };
      try {
        digest = await sha256OfHandle(handle, sizeLimit, signal, knownHashes, hashTurn(uid));
      } catch (e) {
        throw pluginError(`cannot hash the binary of pid ${pid}: ${(e as Error).message}`, e);
      }
      if ("hex" in digest) out.push(sel(`sha256:${digest.hex}`));
      else {
        deps.log?.warn(
          { pid, path: exe, size: digest.tooLarge, workload_size_limit: sizeLimit },
          "workloadattestor(unix): binary is larger than workload_size_limit; unix:sha256 omitted",
        );
      }
      return out;
    } finally {
      await handle.close();
    }
  }

  return {
    name: UNIX_WORKLOAD_ATTESTOR,
    async attest(caller: WorkloadCaller, signal?: AbortSignal): Promise<Selector[]> {
      const { pid, uid, gid } = caller;
      if (!Number.isSafeInteger(pid) || pid <= 0) throw pluginError(`invalid pid ${pid}`);
      const procDir = path.join(procRoot, String(pid));
      let status: string;
      try {
        status = await readFile(path.join(procDir, "status"), { encoding: "utf8", ...(signal === undefined ? {} : { signal }) });
      } catch (e) {
        throw pluginError(`cannot read the status of pid ${pid}: ${(e as Error).message}`, e);
      }
      const creds = parseProcStatus(status);
      const [users, groups] = await Promise.all([readIdNames(passwdPath), readIdNames(groupPath)]);

      const out: Selector[] = [sel(`uid:${uid}`)];
      const user = users.get(uid);
      if (user !== undefined) out.push(sel(`user:${user}`));
      out.push(sel(`gid:${gid}`));
      const group = groups.get(gid);
      if (group !== undefined) out.push(sel(`group:${group}`));
      for (const g of creds.groups) {
        out.push(sel(`supplementary_gid:${g}`));
        const name = groups.get(g);
        if (name !== undefined) out.push(sel(`supplementary_group:${name}`));
      }
      if (discoverPath) out.push(...(await binarySelectors(pid, uid, path.join(procDir, "exe"), signal)));
      return out;
    },
  };
}

/** The `unix` WorkloadAttestor in the plugin catalog. */
export const unixWorkloadAttestorPlugin: PluginDescriptor<"WorkloadAttestor", never, never, WorkloadAttestorDeps, WorkloadAttestor> = {
  type: "WorkloadAttestor",
  name: UNIX_WORKLOAD_ATTESTOR,
  agent: pluginHalf({
    description: "Selectors from the caller's uid, gid and (optionally) binary path and hash.",
    // Written `unix:` (YAML null) or `unix: {}` when every option keeps its default.
    configSchema: unixWorkloadAttestorConfigSchema.nullable().transform((v) => v ?? {}),
    create: (config, deps: WorkloadAttestorDeps) => createUnixWorkloadAttestor(config, { log: deps.log }),
  }),
};
