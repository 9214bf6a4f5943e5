/**
 * What the agent keeps in `data_dir` across restarts, so a restart needs
 * neither a new join token nor the bootstrap bundle:
 *
 * - `agent-svid.pem` (mode 0600): the agent's PKCS#8 private key followed by
 *   its SVID chain, in one file so key and certificate can never disagree
 *   after a crash;
 * - `bundle.json`: the own trust domain's bundle as last synced,
 *   `{"trust_domain": "<name>", "bundle": <SPIFFE bundle>}`.
 *
 * Every write is atomic (`writeFileAtomic`: fresh random temporary file opened
 * `O_EXCL | O_NOFOLLOW`, fsync, rename, fsync of the directory). The directory
 * (created 0700) must belong to the agent's user and not be writable by group
 * or others, or the agent refuses it: whoever could write there could plant a
 * bundle. On load, an SVID that has expired, belongs to another trust
 * domain, or cannot be read is discarded with the reason, as is a bundle of
 * another trust domain or an unreadable one.
 */
import { createPrivateKey } from "node:crypto";
import { existsSync, readFileSync, rmSync } from "node:fs";
import path from "node:path";
import { writeFileAtomic } from "../../common/atomic-file.js";
import { checkSecureDirectory, ensureSecureDirectory } from "../../common/secure-dir.js";
import { bundleToJson, readBundleObject, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import { isJsonObject, parseJson } from "../../spiffe/bundle/json.js";
import { parseSpiffeId, parseTrustDomain, type TrustDomain } from "../../spiffe/id.js";
import { decodePem, encodePemCertificates, encodePemPrivateKey } from "../../spiffe/pem.js";
import { agentSvidFromChain, type AgentSvid } from "./agent-svid.js";

/** File name of the agent's key and SVID chain. */
export const AGENT_SVID_FILE = "agent-svid.pem";
/** File name of the own trust domain's bundle. */
export const BUNDLE_FILE = "bundle.json";

/** What {@link AgentStateStore.load} found. */
export interface LoadedAgentState {
  /** A valid stored agent SVID, if any. */
  readonly svid?: AgentSvid;
  /** The stored own bundle, if any. */
  readonly bundle?: SpiffeBundle;
  /** Why stored state was not used (`agent-svid.pem: expired at …`), for the log. */
  readonly discarded: readonly string[];
}

function errText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** The agent's persisted state in one data directory. */
export class AgentStateStore {
  /** The data directory. */
  readonly dataDir: string;

  /** @param dataDir created (mode 0700) on the first write; when it exists, it must be safe (see the module comment) */
  constructor(dataDir: string) {
    this.dataDir = path.resolve(dataDir);
  }

  /** Path of the key + SVID file. */
  get svidPath(): string {
    return path.join(this.dataDir, AGENT_SVID_FILE);
  }

  /** Path of the bundle file. */
  get bundlePath(): string {
    return path.join(this.dataDir, BUNDLE_FILE);
  }

  /**
   * Reads the stored SVID and bundle, keeping only what is usable for
   * `trustDomain` at `now`. Never throws for bad content: it is reported in
   * `discarded` and the agent starts as if it were absent.
   *
   * @throws SigilError `ERR_PERMISSION_DENIED` when the directory is not safe (named with its owner and mode).
   */
  load(options: { readonly trustDomain: TrustDomain; readonly now: Date }): LoadedAgentState {
    if (existsSync(this.dataDir)) checkSecureDirectory(this.dataDir, "storage");
    const discarded: string[] = [];
    const svid = this.#loadSvid(options.trustDomain, options.now, discarded);
    const bundle = this.#loadBundle(options.trustDomain, discarded);
    return { ...(svid ? { svid } : {}), ...(bundle ? { bundle } : {}), discarded };
  }

  /** Persists the agent SVID and key (mode 0600). */
  saveSvid(svid: AgentSvid): void {
    this.#ensureDir();
    const keyPem = encodePemPrivateKey(new Uint8Array(svid.privateKey.export({ format: "der", type: "pkcs8" })));
    writeFileAtomic(this.svidPath, keyPem + encodePemCertificates(svid.chain), 0o600);
  }

  /** Persists the own trust domain's bundle. */
  saveBundle(bundle: SpiffeBundle): void {
    this.#ensureDir();
    const text = `{"trust_domain":${JSON.stringify(bundle.trustDomain.name)},"bundle":${bundleToJson(bundle)}}\n`;
    writeFileAtomic(this.bundlePath, text, 0o644);
  }

  /** Removes the stored SVID and key (e.g. after the server evicted the agent). */
  clearSvid(): void {
    rmSync(this.svidPath, { force: true });
  }

  #ensureDir(): void {
    ensureSecureDirectory(this.dataDir, 0o700, "storage");
  }

  #read(file: string, discarded: string[]): string | undefined {
    try {
      return readFileSync(file, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") discarded.push(`${path.basename(file)}: cannot be read: ${errText(e)}`);
      return undefined;
    }
  }

  #loadSvid(td: TrustDomain, now: Date, discarded: string[]): AgentSvid | undefined {
    const text = this.#read(this.svidPath, discarded);
    if (text === undefined) return undefined;
    let svid: AgentSvid;
    try {
      const blocks = decodePem(text);
      const keys = blocks.filter((b) => b.label === "PRIVATE KEY");
      const certs = blocks.filter((b) => b.label === "CERTIFICATE").map((b) => b.der);
      const key = keys[0];
      if (keys.length !== 1 || key === undefined) throw new Error(`expected one PRIVATE KEY block, found ${keys.length}`);
      if (certs.length === 0) throw new Error("no CERTIFICATE block");
      svid = agentSvidFromChain(certs, createPrivateKey({ key: Buffer.from(key.der), format: "der", type: "pkcs8" }));
    } catch (e) {
      discarded.push(`${AGENT_SVID_FILE}: unreadable: ${errText(e)}`);
      return undefined;
    }
    const id = parseSpiffeId(svid.spiffeId);
    if (!id.memberOf(td)) {
      discarded.push(`${AGENT_SVID_FILE}: ${svid.spiffeId} is not in trust domain ${td.name}`);
      return undefined;
    }
    if (svid.notAfter.getTime() <= now.getTime()) {
      discarded.push(`${AGENT_SVID_FILE}: expired at ${svid.notAfter.toISOString()}`);
      return undefined;
    }
    return svid;
  }

  #loadBundle(td: TrustDomain, discarded: string[]): SpiffeBundle | undefined {
    const text = this.#read(this.bundlePath, discarded);
    if (text === undefined) return undefined;
    try {
      const doc = parseJson(text);
      if (!isJsonObject(doc)) throw new Error("not a JSON object");
      const name = doc["trust_domain"];
      const inner = doc["bundle"];
      if (typeof name !== "string") throw new Error("trust_domain is missing");
      if (!isJsonObject(inner)) throw new Error("bundle is missing");
      if (parseTrustDomain(name).name !== td.name) {
        discarded.push(`${BUNDLE_FILE}: holds the bundle of ${name}, not ${td.name}`);
        return undefined;
      }
      const bundle = readBundleObject(inner, td, [], { path: ["bundle"] });
      if (bundle.x509Authorities.length === 0) throw new Error("the bundle holds no X.509 authority");
      return bundle;
    } catch (e) {
      discarded.push(`${BUNDLE_FILE}: unreadable: ${errText(e)}`);
      return undefined;
    }
  }
}
