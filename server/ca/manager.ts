/**
 * The trust domain's CA: X.509 CA and JWT signing keys in two slots each (A/B)
 * that move prepared → active → old. A prepared authority is published in the
 * bundle immediately, before it signs anything (FED-1); it becomes active at
 * 1/6 remaining lifetime of the current one (see rotation.ts). The journal of
 * slots lives in the datastore, keys in the key manager; request handlers only
 * reach keys through `signX509Svid` / `signJwtSvid`.
 *
 * ## Several servers on one database
 *
 * Each server is its own CA: its keys stay in its key manager and its slots
 * are its own rows of the journal (keyed by `serverId`). The stored
 * own-trust-domain bundle is the **union** of every server's unexpired
 * authorities: each publication reads the stored bundle and every server's
 * journal records, merges them with this server's authorities, and writes
 * with compare-and-set on the bundle sequence, reading again when another
 * server published first. So two servers publishing at once converge, the
 * sequence strictly increases, and no authority is lost. Every rotation step
 * (10 s) publishes, which is also how a server adopts the bundle another one
 * published (its listeners, and so its agents, get the new roots).
 *
 * ## Taint and revoke (docs/incident-response.md)
 *
 * An operator marks a suspect key `tainted`: it never signs again but stays in
 * the bundle, so connections made with what it signed keep verifying while
 * agents replace those credentials. Tainting the active key activates the
 * prepared one at once, preparing one first when there is none (in the other
 * slot, unless that slot holds another tainted key: then the taint is refused
 * until that one is revoked). `revoked` takes a tainted key out of the bundle
 * of every server sharing the database (the union drops it even when the
 * stored bundle still holds it); it is refused while live SVIDs still chain to
 * the key, unless forced. Both are journal statuses, so a taint or revoke made
 * through one server reaches the key's owner at its next rotation step, which
 * then stops signing with it.
 */
import { createHash, createPublicKey, randomBytes, X509Certificate, type KeyObject } from "node:crypto";
import type { Clock } from "../../common/clock.js";
import { isSigilError, SigilError } from "../../spiffe/errors.js";
import type { SpiffeId, TrustDomain } from "../../spiffe/id.js";
import type { KeyType, Signer } from "../../spiffe/signer.js";
import { createRootCa, createIntermediateCa } from "../../spiffe/x509/ca.js";
import { buildLeafTbs, finishLeaf, prepareLeafTemplate, type LeafTemplate } from "../../spiffe/x509/leaf.js";
import { randomSerial } from "../../spiffe/x509/serial.js";
import { signJwtSvid } from "../../spiffe/jwt/sign.js";
import { parseSpiffeBundle, serializeSpiffeBundle, type SpiffeBundle } from "../../spiffe/bundle/spiffe-bundle.js";
import type { KeyManager } from "../../plugins/keymanager/types.js";
import type { UpstreamAuthority } from "../../plugins/upstreamauthority/types.js";
import type { Datastore } from "../datastore/index.js";
import type { CaJournalRecord } from "../datastore/ca-journal.js";
import { activateAt, prepareAt, rotationAction } from "./rotation.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";

/** Slot names, as in SPIRE. */
export type SlotId = "A" | "B";
/** Slot status in the journal (`revoked` authorities leave this manager's lists). */
export type SlotStatus = "prepared" | "active" | "old" | "tainted" | "revoked";

/** Key family of an authority. */
export type AuthorityKind = "x509" | "jwt";

/** A state change of an authority, as given to {@link CaDeps.onAuthorityEvent}. */
export interface AuthorityEvent {
  readonly event: "prepared" | "activated" | "tainted" | "revoked";
  readonly kind: AuthorityKind;
  readonly keyId: string;
  /** The server whose slot holds the key (`server.server_id`; empty for a lone server). */
  readonly serverId: string;
  readonly at: Date;
  /** The CA certificate (X.509 authorities only). */
  readonly certDer?: Uint8Array;
}

/** The tainted (and revoked) authorities agents must stop serving credentials under. */
export interface TaintedAuthorities {
  /** Lower-case hex SHA-256 of each such X.509 CA certificate's SubjectPublicKeyInfo DER, sorted. */
  readonly x509SpkiSha256: string[];
  /** JWT key IDs (the JWKS `kid`), sorted. */
  readonly jwtKeyIds: string[];
}

/** One authority of any server sharing the database, as {@link CaManager.list} shows it. */
export interface AuthorityView {
  readonly serverId: string;
  readonly kind: AuthorityKind;
  readonly slotId: string;
  readonly keyId: string;
  readonly status: SlotStatus;
  readonly notBefore: Date;
  readonly notAfter: Date;
  /** The CA certificate (X.509 only). */
  readonly certDer?: Uint8Array;
  /** An X.509 CA signed by an upstream authority (an intermediate) rather than self-signed. */
  readonly upstream: boolean;
  /** Hex SHA-256 of the SubjectPublicKeyInfo DER. */
  readonly spkiSha256: string;
}

/** What {@link CaManager.taint} did. */
export interface TaintResult {
  readonly tainted: AuthorityView;
  /** The authority that signs now, when the tainted one was active and this server's. */
  readonly activated?: AuthorityView | undefined;
  /** Set when a successor had to be prepared first. */
  readonly preparedFirst: boolean;
}

/** What {@link CaManager.revoke} did. */
export interface RevokeResult {
  readonly revoked: AuthorityView;
  /** Live SVIDs that still chained to the key (non-zero only when forced). */
  readonly liveSvids: number;
  /**
   * Set when forced over live SVIDs, and for an upstream-signed intermediate
   * (the bundle holds the upstream root, so what it signed still verifies).
   */
  readonly warning?: string | undefined;
}

/**
 * What a revoke did not do, for the operator: SVIDs forced over stop
 * verifying wherever the bundle reaches; an upstream-signed intermediate
 * never was in the bundle, so revoking it makes nothing fail to verify.
 */
function revokeWarning(revoked: AuthorityView, live: number): string | undefined {
  const { keyId } = revoked;
  if (!revoked.upstream) return live > 0 ? `revoked with ${live} live SVID(s) still chaining to ${keyId}: they no longer verify anywhere the bundle reaches` : undefined;
  const forced = live > 0 ? `revoked with ${live} live SVID(s) still chaining to ${keyId}; ` : "";
  return (
    `${forced}${keyId} is an upstream-signed intermediate: the trust bundle holds the upstream root, not this intermediate, so revoking it removed nothing from the bundle ` +
    `and what it signed still verifies wherever that root is trusted until it expires (only the upstream CA can revoke the intermediate itself)`
  );
}

/** One X.509 CA authority. */
export interface X509Authority {
  readonly slotId: SlotId;
  readonly keyId: string;
  readonly signer: Signer;
  /** This CA's certificate, DER. */
  readonly certDer: Uint8Array;
  /** Certificates to send after a leaf: this CA and any upstream intermediates (not the root). */
  readonly chainDers: readonly Uint8Array[];
  /** Roots this authority chains to (itself when self-signed). */
  readonly rootDers: readonly Uint8Array[];
  readonly notBefore: Date;
  readonly notAfter: Date;
  status: SlotStatus;
  template?: LeafTemplate;
  /** `chainDers` without the roots, once {@link chainWithoutRoots} computed it. */
  sendChain?: readonly Uint8Array[];
}

/**
 * An authority's chain without the roots: what follows a leaf it signed on
 * the wire, and the intermediates a peer's chain may need to verify (an
 * upstream authority's). Computed once per authority.
 */
export function chainWithoutRoots(a: X509Authority): readonly Uint8Array[] {
  a.sendChain ??= a.chainDers.filter((d) => !a.rootDers.some((r) => Buffer.from(r).equals(Buffer.from(d))));
  return a.sendChain;
}

/** One JWT signing authority. */
export interface JwtAuthority {
  readonly slotId: SlotId;
  readonly keyId: string;
  readonly signer: Signer;
  readonly notBefore: Date;
  readonly notAfter: Date;
  status: SlotStatus;
}

/** What the CA needs from the datastore: its journal and the own bundle. */
export type CaStore = Pick<Datastore, "listCaJournal" | "upsertCaJournal" | "getBundle" | "setBundle">;

/** CA settings (from the server config). */
export interface CaSettings {
  readonly trustDomain: TrustDomain;
  readonly caTtlMs: number;
  readonly caKeyType: KeyType;
  readonly jwtKeyType: KeyType;
  readonly caSubject?: { readonly country?: string; readonly organization?: string; readonly commonName?: string } | undefined;
  readonly jwtIssuer?: string | undefined;
  readonly refreshHintSeconds?: number | undefined;
  /**
   * This server instance's name among the servers sharing the database
   * (`server.server_id`): its journal rows carry it. Default empty (a lone
   * server, or records written before servers had names).
   */
  readonly serverId?: string | undefined;
}

/**
 * How long a JWT key found in the stored bundle but in no journal record
 * (its slot was reused by another key while it may still verify tokens) is
 * kept published.
 */
export const UNJOURNALED_JWT_KEY_GRACE_MS = 15 * 60_000;

/** Compare-and-set attempts of one bundle publication before giving up (the next rotation step tries again). */
const PUBLISH_ATTEMPTS = 10;

/** Dependencies of the CA manager. */
export interface CaDeps {
  readonly keyManager: KeyManager;
  readonly store: CaStore;
  readonly clock: Clock;
  readonly upstream?: UpstreamAuthority | undefined;
  readonly log?: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void } | undefined;
  /** Called with CA expiry timestamps when they change (metrics). */
  readonly onAuthoritiesChanged?: ((x509: readonly X509Authority[], jwt: readonly JwtAuthority[]) => void) | undefined;
  /** Called when a signing request finds the active authority expired (the rotation job should run now). */
  readonly onActiveExpired?: (() => void) | undefined;
  /**
   * Called, and awaited, on each state change of one of this server's
   * authorities (and on a taint or revoke this server made of another's);
   * the transparency log appends it. A failure is logged, never undoes the change.
   */
  readonly onAuthorityEvent?: ((e: AuthorityEvent) => Promise<void>) | undefined;
  /** How many live SVIDs chain to a CA key (the inventory); revoke is refused while non-zero unless forced. */
  readonly countLiveSvids?: ((caKeyId: string) => Promise<number>) | undefined;
}

/** An issued X509-SVID. */
export interface IssuedX509 {
  /** Leaf first, then intermediates (never the root). */
  readonly chain: readonly Uint8Array[];
  readonly serial: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly caKeyId: string;
}

/** An issued JWT-SVID. */
export interface IssuedJwt {
  readonly token: string;
  readonly issuedAt: Date;
  /** Capped at the signing key's notAfter. */
  readonly expiresAt: Date;
  /** The key manager's ID of the signing key. */
  readonly keyId: string;
}

/** What an X509-SVID is issued from: the ID, key and TTL come from the caller (an entry), never from a CSR. */
export interface X509SvidRequest {
  readonly spiffeId: SpiffeId;
  /** SubjectPublicKeyInfo DER. */
  readonly publicKeyDer: Uint8Array;
  readonly ttlMs: number;
  readonly dnsNames?: readonly string[] | undefined;
}

/** What a downstream server's intermediate CA is signed from. */
export interface DownstreamX509CaRequest {
  /** SubjectPublicKeyInfo DER of the downstream CA's key. */
  readonly publicKeyDer: Uint8Array;
  readonly ttlMs: number;
}

/** What a JWT-SVID is issued from. */
export interface JwtSvidRequest {
  readonly spiffeId: SpiffeId;
  readonly audience: readonly string[];
  readonly ttlMs: number;
}

interface PreparedLeaf {
  readonly tbs: Uint8Array;
  done(leaf: Uint8Array): IssuedX509;
}

/** `e` as a SigilError; anything else becomes an `ERR_X509_BUILD` naming it. */
function asSigilError(e: unknown): SigilError {
  return e instanceof SigilError ? e : new SigilError("ERR_X509_BUILD", `ca: signing failed: ${(e as Error).message}`, { cause: e });
}

/** Certificates are backdated a little for clock skew, like SPIRE. */
const BACKDATE_MS = 10_000;

function otherSlot(s: SlotId): SlotId {
  return s === "A" ? "B" : "A";
}

/** Whether the last certificate of `chainDers` (leaf-most first) was issued by one of `rootDers` (or is one). */
function chainsToAny(chainDers: readonly Uint8Array[], rootDers: readonly Uint8Array[]): boolean {
  const lastDer = chainDers[chainDers.length - 1];
  if (!lastDer) return false;
  const last = new X509Certificate(lastDer);
  return rootDers.some((d) => {
    if (Buffer.from(d).equals(Buffer.from(lastDer))) return true;
    const root = new X509Certificate(d);
    return last.checkIssued(root) && last.verify(root.publicKey);
  });
}

/** The CA manager; see the module comment. */
export class CaManager {
  readonly #s: CaSettings;
  readonly #d: CaDeps;
  #x509: X509Authority[] = [];
  #jwt: JwtAuthority[] = [];
  #bundle: SpiffeBundle | undefined;
  /** JWT keys from the journal whose private keys are gone but whose tokens may still be live. */
  #retiredJwt = new Map<string, { key: KeyObject; notAfter: Date }>();
  readonly #bundleListeners = new Set<(b: SpiffeBundle) => void>();
  /** JWT keys of the stored bundle that no journal record explains, by key ID: when first noticed (ms). */
  readonly #unjournaledJwt = new Map<string, number>();
  readonly #serverId: string;
  #tainted: TaintedAuthorities = { x509SpkiSha256: [], jwtKeyIds: [] };
  readonly #taintListeners = new Set<(t: TaintedAuthorities) => void>();
  /** Rotation steps and operator commands run one at a time (each reads, then writes, the slots). */
  #queue: Promise<unknown> = Promise.resolve();
  /** The CA journal as the last bundle publication read it (every server's rows). */
  #journalSeen: readonly CaJournalRecord[] = [];
  /** The upstream's current roots as it last pushed them (`UpstreamAuthority.watchRoots`), by base64 DER; undefined until it does. */
  #upstreamRoots: Map<string, Uint8Array> | undefined;
  /** Stops the upstream's root watch. */
  #stopRootWatch: (() => void) | undefined;

  constructor(settings: CaSettings, deps: CaDeps) {
    this.#s = settings;
    this.#d = deps;
    this.#serverId = settings.serverId ?? "";
  }

  /** Restores slots from the journal (where keys survived) or creates fresh ones, then publishes the bundle. */
  async start(): Promise<void> {
    const now = this.#d.clock.now();
    const all = await this.#d.store.listCaJournal();
    const own = all.filter((r) => r.serverId === this.#serverId);
    // Records from before servers had names: this server's if its key manager holds the key (adopted below).
    const legacy = this.#serverId === "" ? [] : all.filter((r) => r.serverId === "" && !own.some((o) => o.kind === r.kind && o.slotId === r.slotId));
    const adopted: Array<X509Authority | JwtAuthority> = [];
    for (const r of [...own, ...legacy]) {
      if (r.notAfter.getTime() <= now.getTime() || (r.slotId !== "A" && r.slotId !== "B") || r.status === "revoked") continue;
      const isLegacy = r.serverId !== this.#serverId;
      const signer = await this.#d.keyManager.getKey(r.keyId);
      const sameKey = signer !== undefined && Buffer.from(signer.publicKey.export({ format: "der", type: "spki" })).equals(Buffer.from(r.publicKeyDer));
      if (!signer || !sameKey) {
        if (isLegacy) continue;
        if (r.kind === "jwt") this.#retiredJwt.set(r.keyId, { key: createPublicKey({ key: Buffer.from(r.publicKeyDer), format: "der", type: "spki" }), notAfter: r.notAfter });
        continue;
      }
      if (r.kind === "x509" && r.certDer) {
        if (this.#x509.some((a) => a.slotId === r.slotId)) continue;
        this.#x509.push({
          slotId: r.slotId,
          keyId: r.keyId,
          signer,
          certDer: r.certDer,
          chainDers: r.chainDers.length ? r.chainDers : [r.certDer],
          rootDers: r.rootDers.length ? r.rootDers : [r.certDer],
          notBefore: r.notBefore,
          notAfter: r.notAfter,
          status: r.status,
          ...(r.status === "active"
            ? { template: prepareLeafTemplate({ issuerCertDer: r.certDer, issuerSigner: signer, trustDomain: this.#s.trustDomain }) }
            : {}),
        });
      } else if (r.kind === "jwt") {
        if (this.#jwt.some((a) => a.slotId === r.slotId)) continue;
        this.#jwt.push({ slotId: r.slotId, keyId: r.keyId, signer, notBefore: r.notBefore, notAfter: r.notAfter, status: r.status });
      } else {
        continue;
      }
      if (isLegacy) adopted.push(r.kind === "x509" ? (this.#x509[this.#x509.length - 1] as X509Authority) : (this.#jwt[this.#jwt.length - 1] as JwtAuthority));
    }
    for (const a of adopted) {
      await this.#journal("certDer" in a ? "x509" : "jwt", a);
      this.#d.log?.info({ kind: "certDer" in a ? "x509" : "jwt", slot: a.slotId, key_id: a.keyId, server_id: this.#serverId }, "ca: adopted an unnamed journal record whose key this server holds");
    }
    const stored = await this.#d.store.getBundle(this.#s.trustDomain.name);
    if (stored) {
      try {
        this.#bundle = parseSpiffeBundle(stored.document, this.#s.trustDomain).bundle;
      } catch (e) {
        this.#d.log?.warn({ err: (e as Error).message }, "ca: stored bundle is unreadable; rebuilding it");
      }
    }
    await this.rotate();
    const upstream = this.#d.upstream;
    if (upstream?.watchRoots) {
      this.#stopRootWatch = upstream.watchRoots(this.#s.trustDomain, (roots) => {
        this.upstreamRootsChanged(roots).catch((e: unknown) => this.#d.log?.warn({ err: (e as Error).message }, "ca: taking up the upstream's changed roots failed; the next change or rotation tries again"));
      });
    }
  }

  /** Stops watching the upstream's roots (the plugin itself is closed by its owner). */
  stop(): void {
    this.#stopRootWatch?.();
    this.#stopRootWatch = undefined;
  }

  /**
   * The upstream authority's roots changed (a nested server's parent added,
   * or withdrew, a root). Roots an upstream gave this trust domain and no
   * longer publishes leave the bundle (the upstream's are the only ones the
   * child may vouch for); new ones join it. When the root the active X.509 CA
   * chains to is gone, the CA is replaced at once: a prepared one that chains
   * to a current root is activated, else a new one is minted.
   */
  upstreamRootsChanged(rootDers: readonly Uint8Array[]): Promise<void> {
    return this.#serial(async () => {
      if (rootDers.length === 0) throw new SigilError("ERR_INVALID_ARGUMENT", "ca: the upstream pushed an empty root set; keeping the current roots");
      const now = this.#d.clock.now();
      this.#upstreamRoots = new Map(rootDers.map((d) => [Buffer.from(d).toString("base64"), d]));
      try {
        await this.#replaceOrphanedX509(now);
      } finally {
        // New and withdrawn roots are published even when the replacement failed (the rotation step retries it).
        await this.#publishBundle(now);
        this.#d.onAuthoritiesChanged?.(this.#x509, this.#jwt);
      }
    });
  }

  /**
   * When the upstream has withdrawn the root the active X.509 CA chains to:
   * activates a prepared CA that chains to a current root, or mints one.
   * True when it replaced the CA.
   */
  async #replaceOrphanedX509(now: Date): Promise<boolean> {
    if (!this.#upstreamRoots) return false;
    const current = [...this.#upstreamRoots.values()];
    const active = this.#x509.find((a) => a.status === "active");
    if (!active || chainsToAny(active.chainDers, current)) return false;
    const prepared = this.#x509.find((a) => a.status === "prepared" && a.notAfter.getTime() > now.getTime() && chainsToAny(a.chainDers, current));
    this.#d.log?.warn({ key_id: active.keyId, prepared: prepared?.keyId }, "ca: the upstream no longer publishes the root the active X.509 CA chains to; replacing the CA now");
    const next = (prepared ?? (await this.#prepare("x509", otherSlot(active.slotId), now))) as X509Authority;
    active.status = "old";
    delete active.template;
    await this.#activate("x509", next);
    await this.#journal("x509", active);
    return true;
  }

  /** Whether `der` (a root) is one an upstream gave and has since withdrawn. */
  #withdrawnUpstreamRoot(b64: string): boolean {
    if (this.#upstreamRoots === undefined || this.#upstreamRoots.has(b64)) return false;
    const fromUpstream = (rootDers: readonly Uint8Array[], certDer: Uint8Array | undefined) =>
      certDer !== undefined && !rootDers.some((r) => Buffer.from(r).equals(Buffer.from(certDer))) && rootDers.some((r) => Buffer.from(r).toString("base64") === b64);
    return this.#x509.some((a) => fromUpstream(a.rootDers, a.certDer)) || this.#journalSeen.some((r) => r.kind === "x509" && fromUpstream(r.rootDers, r.certDer ?? undefined));
  }

  /** Runs `fn` after every step and command under way (see `#queue`). */
  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(fn, fn);
    this.#queue = run.catch(() => undefined);
    return run;
  }

  /**
   * One rotation step (run every few seconds): take up taints and revocations
   * other servers journaled for this server's keys, prepare, activate, prune.
   */
  rotate(): Promise<void> {
    return this.#serial(() => this.#rotateStep());
  }

  /**
   * The next instant a rotation step has something to do for this server's
   * own authorities: a successor to prepare or activate, or an authority
   * expiring (it leaves the bundle), as milliseconds from now on the
   * manager's clock; undefined when nothing is scheduled. The rotation job
   * wakes then rather than on its next fixed tick: with a short `ca_ttl` a
   * tick late by a few seconds would activate the successor after the old
   * authority expired, leaving nothing valid to sign with.
   */
  msUntilNextRotation(): number | undefined {
    const now = this.#d.clock.now().getTime();
    let next = Number.POSITIVE_INFINITY;
    const consider = (t: number): void => {
      if (t > now && t < next) next = t;
    };
    for (const list of [this.#x509, this.#jwt] as const) {
      for (const a of list) consider(a.notAfter.getTime());
      const active = list.find((a) => a.status === "active" && a.notAfter.getTime() > now);
      if (active === undefined) continue;
      const prepared = list.some((a) => a.status === "prepared" && a.notAfter.getTime() > now);
      if (!prepared) consider(prepareAt(active.notBefore, active.notAfter).getTime());
      consider(activateAt(active.notBefore, active.notAfter).getTime());
    }
    return Number.isFinite(next) ? next - now : undefined;
  }

  async #rotateStep(): Promise<void> {
    const now = this.#d.clock.now();
    let changed = false;
    // The journal as the last publication read it (no extra read per step); once more below if it changed since.
    for (let pass = 0; pass < 2; pass++) {
      if (pass === 1 && !this.#reconcile(this.#journalSeen)) break;
      if (pass === 0) changed = this.#reconcile(this.#journalSeen);
      else changed = true;
      // A CA whose upstream root was withdrawn, not replaced when that was pushed (the upstream refused then): again now.
      if (pass === 0) changed = (await this.#replaceOrphanedX509(now)) || changed;
      changed = (await this.#rotateFamily("x509", now)) || changed;
      changed = (await this.#rotateFamily("jwt", now)) || changed;
      // Old authorities stay published until they expire (SVIDs they signed may still be in use).
      const before = this.#x509.length + this.#jwt.length;
      this.#x509 = this.#x509.filter((a) => a.notAfter.getTime() > now.getTime());
      this.#jwt = this.#jwt.filter((a) => a.notAfter.getTime() > now.getTime());
      if (this.#x509.length + this.#jwt.length !== before) changed = true;
      // Always recompute: expiring authorities (also ones kept from the journal) leave the bundle.
      await this.#publishBundle(now);
    }
    if (changed) this.#d.onAuthoritiesChanged?.(this.#x509, this.#jwt);
  }

  async #rotateFamily(kind: "x509" | "jwt", now: Date): Promise<boolean> {
    const list: (X509Authority | JwtAuthority)[] = kind === "x509" ? this.#x509 : this.#jwt;
    const active = list.find((a) => a.status === "active" && a.notAfter.getTime() > now.getTime());
    const prepared = list.find((a) => a.status === "prepared" && a.notAfter.getTime() > now.getTime());
    if (!active) {
      // Nothing can sign: make (or take) an authority and activate it at once.
      const next = prepared ?? (await this.#prepare(kind, this.#freeSlot(kind, now), now));
      await this.#activate(kind, next);
      return true;
    }
    const action = rotationAction(active.notBefore, active.notAfter, now, prepared !== undefined);
    if (action === "prepare") {
      const slot = otherSlot(active.slotId);
      const holder = list.find((a) => a.slotId === slot && a.status === "tainted");
      if (holder) {
        // A tainted key keeps its slot (and journal row) until revoked; only when a successor is due does it give way.
        if (now.getTime() < activateAt(active.notBefore, active.notAfter).getTime()) return false;
        this.#d.log?.warn({ kind, slot, key_id: holder.keyId }, "ca: a tainted authority was never revoked; its slot is reused for the next authority");
      }
      await this.#prepare(kind, slot, now);
      return true;
    }
    if (action === "activate" && prepared) {
      active.status = "old";
      await this.#journal(kind, active);
      await this.#activate(kind, prepared);
      return true;
    }
    return false;
  }

  /** A slot for a new authority when none is active: one not holding a tainted key, else the one whose key expires first. */
  #freeSlot(kind: AuthorityKind, now: Date): SlotId {
    const list: readonly (X509Authority | JwtAuthority)[] = kind === "x509" ? this.#x509 : this.#jwt;
    const tainted = (s: SlotId) => list.find((a) => a.slotId === s && a.status === "tainted" && a.notAfter.getTime() > now.getTime());
    const a = tainted("A");
    const b = tainted("B");
    if (!a) return "A";
    if (!b) return "B";
    const slot = a.notAfter.getTime() <= b.notAfter.getTime() ? "A" : "B";
    this.#d.log?.warn({ kind, slot, key_id: (slot === "A" ? a : b).keyId }, "ca: both slots hold tainted authorities; the one expiring first gives way");
    return slot;
  }

  async #prepare(kind: "x509" | "jwt", slotId: SlotId, now: Date): Promise<X509Authority | JwtAuthority> {
    const keyId = `${kind}-${slotId}-${randomBytes(6).toString("hex")}`;
    const signer = await this.#d.keyManager.generateKey(keyId, kind === "x509" ? this.#s.caKeyType : this.#s.jwtKeyType);
    const notBefore = new Date(now.getTime() - BACKDATE_MS);
    let notAfter = new Date(now.getTime() + this.#s.caTtlMs);
    let authority: X509Authority | JwtAuthority;
    if (kind === "x509") {
      let certDer: Uint8Array;
      let chainDers: readonly Uint8Array[];
      let rootDers: readonly Uint8Array[];
      if (this.#d.upstream) {
        const minted = await this.#d.upstream.mintX509Ca({
          trustDomain: this.#s.trustDomain,
          publicKey: signer.publicKey,
          notBefore,
          notAfter,
          subject: this.#s.caSubject,
        });
        certDer = minted.certDer;
        chainDers = [minted.certDer, ...minted.intermediateDers];
        rootDers = minted.rootDers;
        notAfter = minted.notAfter;
      } else {
        certDer = createRootCa({
          trustDomain: this.#s.trustDomain,
          signer,
          notBefore,
          notAfter,
          ...(this.#s.caSubject ? { subject: this.#s.caSubject } : {}),
        });
        chainDers = [certDer];
        rootDers = [certDer];
      }
      authority = { slotId, keyId, signer, certDer, chainDers, rootDers, notBefore, notAfter, status: "prepared" };
      this.#x509 = this.#x509.filter((a) => a.slotId !== slotId || a.status === "active");
      this.#x509.push(authority);
    } else {
      authority = { slotId, keyId, signer, notBefore, notAfter, status: "prepared" };
      // The slot's old key can still be valid here (half life of the active key falls a few seconds
      // before the old one's notAfter, because keys are backdated): tokens it signed stay verifiable
      // until they expire, so it stays published until its notAfter. An expired one is remembered
      // too: its journal row is overwritten now, and the stored bundle may still hold it, so its
      // known notAfter (not the grace given to keys nobody knows) takes it out at once.
      for (const a of this.#jwt) {
        if (a.slotId === slotId && a.status !== "active") this.#retiredJwt.set(a.keyId, { key: a.signer.publicKey, notAfter: a.notAfter });
      }
      this.#jwt = this.#jwt.filter((a) => a.slotId !== slotId || a.status === "active");
      this.#jwt.push(authority);
    }
    await this.#journal(kind, authority);
    // Publish before use (FED-1): the bundle carries the prepared authority now.
    await this.#publishBundle(now);
    this.#d.log?.info({ kind, slot: slotId, key_id: keyId, not_after: notAfter.toISOString() }, "ca: prepared authority");
    await this.#emit("prepared", kind, keyId, this.#serverId, "certDer" in authority ? authority.certDer : undefined);
    return authority;
  }

  /** Makes `a` the signing authority: its status and leaf template change before the first await, so no request sees two or none. */
  async #activate(kind: "x509" | "jwt", a: X509Authority | JwtAuthority): Promise<void> {
    a.status = "active";
    if (kind === "x509") {
      const x = a as X509Authority;
      x.template = prepareLeafTemplate({ issuerCertDer: x.certDer, issuerSigner: x.signer, trustDomain: this.#s.trustDomain });
    }
    await this.#journal(kind, a);
    this.#d.log?.info({ kind, slot: a.slotId, key_id: a.keyId }, "ca: activated authority");
    await this.#emit("activated", kind, a.keyId, this.#serverId, "certDer" in a ? a.certDer : undefined);
  }

  async #emit(event: AuthorityEvent["event"], kind: AuthorityKind, keyId: string, serverId: string, certDer: Uint8Array | undefined): Promise<void> {
    if (!this.#d.onAuthorityEvent) return;
    try {
      await this.#d.onAuthorityEvent({ event, kind, keyId, serverId, at: this.#d.clock.now(), ...(certDer ? { certDer } : {}) });
    } catch (e) {
      this.#d.log?.warn({ event, kind, key_id: keyId, err: (e as Error).message }, "ca: recording an authority event failed");
    }
  }

  /**
   * Takes up what the journal says of this server's keys that another server
   * changed: a tainted key stops signing, a revoked one is dropped. True when
   * anything changed.
   */
  #reconcile(journal: readonly CaJournalRecord[]): boolean {
    let changed = false;
    for (const r of journal) {
      if (r.serverId !== this.#serverId || (r.status !== "tainted" && r.status !== "revoked")) continue;
      const list: (X509Authority | JwtAuthority)[] = r.kind === "x509" ? this.#x509 : this.#jwt;
      const a = list.find((x) => x.keyId === r.keyId);
      if (!a || a.status === r.status) continue;
      if (r.status === "tainted") {
        a.status = "tainted";
        if ("template" in a) delete a.template;
      } else {
        this.#drop(r.kind, a.keyId);
      }
      changed = true;
      this.#d.log?.warn({ kind: r.kind, key_id: r.keyId, status: r.status }, `ca: authority ${r.status} through another server`);
    }
    return changed;
  }

  /** Forgets one of this server's authorities (revoked): it signs and verifies nothing any more. */
  #drop(kind: AuthorityKind, keyId: string): void {
    if (kind === "x509") this.#x509 = this.#x509.filter((a) => a.keyId !== keyId);
    else this.#jwt = this.#jwt.filter((a) => a.keyId !== keyId);
    this.#retiredJwt.delete(keyId);
  }

  /** Current authorities of every server sharing the database (revoked ones while their journal rows last), for `authority list`. */
  async list(): Promise<AuthorityView[]> {
    const now = this.#d.clock.now().getTime();
    const rows = await this.#d.store.listCaJournal();
    return rows
      .filter((r) => r.notAfter.getTime() > now)
      .map(viewOfRow)
      .sort((a, b) => a.kind.localeCompare(b.kind) || a.serverId.localeCompare(b.serverId) || a.slotId.localeCompare(b.slotId));
  }

  /**
   * Prepares the next authority of `kind` now: published in the bundle at
   * once, signing nothing until activated. Refused when one is already
   * prepared, or when the slot it needs holds a tainted key (revoke it first).
   */
  prepare(kind: AuthorityKind): Promise<AuthorityView> {
    return this.#serial(async () => {
      const now = this.#d.clock.now();
      const list: readonly (X509Authority | JwtAuthority)[] = kind === "x509" ? this.#x509 : this.#jwt;
      const prepared = list.find((a) => a.status === "prepared");
      if (prepared) throw new SigilError("ERR_FAILED_PRECONDITION", `ca: ${kind} authority ${prepared.keyId} is already prepared (slot ${prepared.slotId}); activate it first`);
      const active = list.find((a) => a.status === "active");
      const slot = active ? otherSlot(active.slotId) : this.#freeSlot(kind, now);
      const holder = list.find((a) => a.slotId === slot && a.status === "tainted");
      if (holder) throw new SigilError("ERR_FAILED_PRECONDITION", `ca: slot ${slot} holds tainted ${kind} authority ${holder.keyId}; revoke it before preparing another`);
      const a = await this.#prepare(kind, slot, now);
      this.#d.onAuthoritiesChanged?.(this.#x509, this.#jwt);
      return this.#view(kind, a);
    });
  }

  /**
   * Activates the prepared authority of `kind` now (the active one becomes
   * old and stays published until it expires). Refused when none is prepared.
   * Agents that have not fetched the bundle since it was prepared may not yet trust what it signs.
   */
  activate(kind: AuthorityKind): Promise<{ activated: AuthorityView; previous?: AuthorityView | undefined }> {
    return this.#serial(async () => {
      const now = this.#d.clock.now();
      const list: readonly (X509Authority | JwtAuthority)[] = kind === "x509" ? this.#x509 : this.#jwt;
      const prepared = list.find((a) => a.status === "prepared" && a.notAfter.getTime() > now.getTime());
      if (!prepared) throw new SigilError("ERR_FAILED_PRECONDITION", `ca: no prepared ${kind} authority to activate; run "sigil-server authority prepare --kind ${kind}" first`);
      const active = list.find((a) => a.status === "active");
      if (active) {
        active.status = "old";
        if ("template" in active) delete active.template;
      }
      await this.#activate(kind, prepared);
      if (active) await this.#journal(kind, active);
      await this.#publishBundle(now);
      this.#d.onAuthoritiesChanged?.(this.#x509, this.#jwt);
      return { activated: this.#view(kind, prepared), ...(active ? { previous: this.#view(kind, active) } : {}) };
    });
  }

  /**
   * Taints a key (see the module comment): it never signs again and stays
   * published; agents replace what it signed. Tainting this server's active
   * key activates the prepared one at once, preparing one first when there is
   * none. Another server's key is marked in the journal and its owner stops
   * signing with it at its next rotation step. For an upstream-signed CA the
   * key ID is the intermediate's: everything this server signed under it is replaced.
   */
  taint(kind: AuthorityKind, keyId: string): Promise<TaintResult> {
    return this.#serial(async () => {
      const now = this.#d.clock.now();
      const list: readonly (X509Authority | JwtAuthority)[] = kind === "x509" ? this.#x509 : this.#jwt;
      const own = list.find((a) => a.keyId === keyId);
      if (!own) {
        const row = await this.#foreignRow(kind, keyId, "taint");
        if (row.status === "tainted") throw new SigilError("ERR_FAILED_PRECONDITION", `ca: ${kind} authority ${keyId} is already tainted`);
        const tainted: CaJournalRecord = { ...row, status: "tainted" };
        await this.#d.store.upsertCaJournal(tainted);
        await this.#publishBundle(now);
        await this.#emit("tainted", kind, keyId, row.serverId, row.certDer);
        return { tainted: viewOfRow(tainted), preparedFirst: false };
      }
      if (own.status === "tainted") throw new SigilError("ERR_FAILED_PRECONDITION", `ca: ${kind} authority ${keyId} is already tainted`);
      let next: X509Authority | JwtAuthority | undefined;
      let preparedFirst = false;
      if (own.status === "active") {
        next = list.find((a) => a.status === "prepared" && a.notAfter.getTime() > now.getTime());
        if (!next) {
          const slot = otherSlot(own.slotId);
          const holder = list.find((a) => a.slotId === slot && a.status === "tainted");
          if (holder) {
            throw new SigilError(
              "ERR_FAILED_PRECONDITION",
              `ca: cannot taint the active ${kind} authority ${keyId}: no successor can be prepared while slot ${slot} holds tainted authority ${holder.keyId}; revoke that one first`,
            );
          }
          next = await this.#prepare(kind, slot, now);
          preparedFirst = true;
        }
      }
      own.status = "tainted";
      if ("template" in own) delete own.template;
      if (next) await this.#activate(kind, next);
      await this.#journal(kind, own);
      await this.#publishBundle(now);
      this.#d.onAuthoritiesChanged?.(this.#x509, this.#jwt);
      this.#d.log?.warn({ kind, key_id: keyId, activated: next?.keyId }, "ca: authority tainted");
      await this.#emit("tainted", kind, keyId, this.#serverId, "certDer" in own ? own.certDer : undefined);
      return { tainted: this.#view(kind, own), ...(next ? { activated: this.#view(kind, next) } : {}), preparedFirst };
    });
  }

  /**
   * Revokes a tainted key: it leaves the bundle of every server sharing the
   * database. Refused for a key that is not tainted (an active one among
   * them), and while live SVIDs still chain to it unless `force` (the result
   * then carries a warning). An upstream-signed intermediate is not in the
   * bundle (its upstream root is): revoking it stops this trust domain
   * serving it and keeps it in the agents' taint set, but only the upstream
   * CA can make its signatures fail; the result always warns so.
   */
  revoke(kind: AuthorityKind, keyId: string, options: { force?: boolean | undefined } = {}): Promise<RevokeResult> {
    return this.#serial(async () => {
      const now = this.#d.clock.now();
      const list: readonly (X509Authority | JwtAuthority)[] = kind === "x509" ? this.#x509 : this.#jwt;
      const own = list.find((a) => a.keyId === keyId);
      const row = own ? undefined : await this.#foreignRow(kind, keyId, "revoke");
      const status = own?.status ?? (row as CaJournalRecord).status;
      if (status === "active") throw new SigilError("ERR_FAILED_PRECONDITION", `ca: refusing to revoke the active ${kind} authority ${keyId}: taint it first (that activates a successor)`);
      if (status !== "tainted") throw new SigilError("ERR_FAILED_PRECONDITION", `ca: refusing to revoke ${kind} authority ${keyId} (${status}): only a tainted authority can be revoked; taint it first`);
      const live = (await this.#d.countLiveSvids?.(keyId)) ?? 0;
      if (live > 0 && options.force !== true) {
        throw new SigilError(
          "ERR_FAILED_PRECONDITION",
          `ca: ${live} live SVID(s) still chain to ${kind} authority ${keyId}; wait until "sigil-server inventory --key-id ${keyId}" shows none, or revoke with --force`,
        );
      }
      let revoked: AuthorityView;
      if (own) {
        own.status = "revoked";
        await this.#journal(kind, own);
        this.#drop(kind, keyId);
        revoked = this.#view(kind, own);
      } else {
        const r: CaJournalRecord = { ...(row as CaJournalRecord), status: "revoked" };
        await this.#d.store.upsertCaJournal(r);
        revoked = viewOfRow(r);
      }
      await this.#publishBundle(now);
      if (own) this.#d.onAuthoritiesChanged?.(this.#x509, this.#jwt);
      const warning = revokeWarning(revoked, live);
      this.#d.log?.warn({ kind, key_id: keyId, live_svids: live, forced: live > 0 }, "ca: authority revoked");
      await this.#emit("revoked", kind, keyId, revoked.serverId, revoked.certDer);
      return { revoked, liveSvids: live, ...(warning ? { warning } : {}) };
    });
  }

  /** Another server's unexpired, unrevoked journal row for `keyId`, or NotFound / FailedPrecondition naming it. */
  async #foreignRow(kind: AuthorityKind, keyId: string, what: string): Promise<CaJournalRecord> {
    const rows = (await this.#d.store.listCaJournal(kind)).filter((r) => r.keyId === keyId);
    const row = rows.find((r) => r.notAfter.getTime() > this.#d.clock.now().getTime());
    if (!row) {
      throw new SigilError("ERR_NOT_FOUND", rows.length > 0 ? `ca: ${kind} authority ${keyId} has expired; nothing it signed is valid` : `ca: no ${kind} authority with key ID "${keyId}" (see "sigil-server authority list")`);
    }
    if (row.status === "revoked") throw new SigilError("ERR_FAILED_PRECONDITION", `ca: cannot ${what} ${kind} authority ${keyId}: it is already revoked`);
    return row;
  }

  #view(kind: AuthorityKind, a: X509Authority | JwtAuthority): AuthorityView {
    const spki = a.signer.publicKey.export({ format: "der", type: "spki" });
    const x = kind === "x509" ? (a as X509Authority) : undefined;
    return {
      serverId: this.#serverId,
      kind,
      slotId: a.slotId,
      keyId: a.keyId,
      status: a.status,
      notBefore: a.notBefore,
      notAfter: a.notAfter,
      ...(x ? { certDer: x.certDer } : {}),
      upstream: x !== undefined && !x.rootDers.some((r) => Buffer.from(r).equals(Buffer.from(x.certDer))),
      spkiSha256: sha256Hex(spki),
    };
  }

  /** The tainted (and revoked, unexpired) authorities of every server sharing the database, as last read from the journal. */
  taintedAuthorities(): TaintedAuthorities {
    return this.#tainted;
  }

  /**
   * Subscribes to changes of {@link taintedAuthorities} (a taint or revoke
   * through this server, or one another server journaled, seen at the next
   * rotation step); returns an unsubscribe function.
   */
  onTaintChange(listener: (t: TaintedAuthorities) => void): () => void {
    this.#taintListeners.add(listener);
    return () => this.#taintListeners.delete(listener);
  }

  #updateTainted(journal: readonly CaJournalRecord[], t: number): void {
    const x509 = new Set<string>();
    const jwt = new Set<string>();
    for (const r of journal) {
      if ((r.status !== "tainted" && r.status !== "revoked") || r.notAfter.getTime() <= t) continue;
      if (r.kind === "x509") x509.add(sha256Hex(r.publicKeyDer));
      else jwt.add(r.keyId);
    }
    const next: TaintedAuthorities = { x509SpkiSha256: [...x509].sort(), jwtKeyIds: [...jwt].sort() };
    if (next.x509SpkiSha256.join() === this.#tainted.x509SpkiSha256.join() && next.jwtKeyIds.join() === this.#tainted.jwtKeyIds.join()) return;
    this.#tainted = next;
    for (const l of this.#taintListeners) {
      try {
        l(next);
      } catch (e) {
        this.#d.log?.warn({ err: (e as Error).message }, "ca: a taint listener failed");
      }
    }
  }

  async #journal(kind: "x509" | "jwt", a: X509Authority | JwtAuthority): Promise<void> {
    const x = kind === "x509" ? (a as X509Authority) : undefined;
    await this.#d.store.upsertCaJournal({
      serverId: this.#serverId,
      kind,
      slotId: a.slotId,
      keyId: a.keyId,
      status: a.status,
      publicKeyDer: new Uint8Array(a.signer.publicKey.export({ format: "der", type: "spki" })),
      certDer: x?.certDer ?? null,
      chainDers: x?.chainDers ?? [],
      rootDers: x?.rootDers ?? [],
      notBefore: a.notBefore,
      notAfter: a.notAfter,
    });
  }

  /**
   * Publishes the union of the stored bundle's unexpired authorities, every
   * server's journal and this server's authorities, compare-and-set on the
   * stored sequence (read again when another server wrote first). When the
   * union is what is stored, adopts the stored bundle (another server may
   * have published it).
   */
  async #publishBundle(now: Date): Promise<void> {
    const td = this.#s.trustDomain.name;
    for (let attempt = 1; ; attempt++) {
      const stored = await this.#d.store.getBundle(td);
      let storedBundle: SpiffeBundle | undefined;
      if (stored) {
        try {
          storedBundle = parseSpiffeBundle(stored.document, this.#s.trustDomain).bundle;
        } catch (e) {
          this.#d.log?.warn({ err: (e as Error).message }, "ca: stored bundle is unreadable; rebuilding it");
        }
      }
      // Without a readable stored bundle, keep what this server published last (e.g. a memory key manager's keys after a restart).
      const base = storedBundle ?? this.#bundle;
      const next = await this.#union(base, now);
      if (storedBundle !== undefined && sameAuthorities(storedBundle, next)) {
        // Nothing to add: take the stored bundle when another server published it.
        if (this.#bundle === undefined || storedBundle.sequenceNumber !== this.#bundle.sequenceNumber || !sameAuthorities(this.#bundle, storedBundle)) this.#adopt(storedBundle);
        return;
      }
      const sequence = (storedBundle?.sequenceNumber ?? (stored ? BigInt(stored.sequence) : (this.#bundle?.sequenceNumber ?? 0n))) + 1n;
      const bundle: SpiffeBundle = { ...next, sequenceNumber: sequence };
      try {
        await this.#d.store.setBundle({ trustDomain: td, document: serializeSpiffeBundle(bundle), sequence }, { expectedSequence: stored ? stored.sequence : null });
      } catch (e) {
        // Another server published in between: merge with its bundle.
        if (attempt < PUBLISH_ATTEMPTS && (isSigilError(e, "ERR_INVALID_ARGUMENT") || isSigilError(e, "ERR_ALREADY_EXISTS"))) continue;
        throw e;
      }
      this.#adopt(bundle);
      return;
    }
  }

  /** The bundle to publish: `base`'s unexpired authorities, every server's journal, this server's authorities. */
  async #union(base: SpiffeBundle | undefined, now: Date): Promise<SpiffeBundle> {
    const t = now.getTime();
    const roots = new Map<string, Uint8Array>();
    const jwtKeys = new Map<string, KeyObject>();
    const journal = await this.#d.store.listCaJournal();
    this.#journalSeen = journal;
    this.#updateTainted(journal, t);
    // Revoked keys leave the bundle even when the stored one (another server's publication) still holds them.
    const revokedCerts = new Set<string>();
    const revokedJwt = new Set<string>();
    for (const r of journal) {
      if (r.status !== "revoked") continue;
      if (r.kind === "jwt") revokedJwt.add(r.keyId);
      else if (r.certDer) revokedCerts.add(Buffer.from(r.certDer).toString("base64"));
    }
    /** Every journaled JWT key's notAfter, by key ID. */
    const journaledJwt = new Map<string, number>();
    for (const r of journal) if (r.kind === "jwt") journaledJwt.set(r.keyId, Math.max(journaledJwt.get(r.keyId) ?? 0, r.notAfter.getTime()));
    if (base) {
      for (const der of base.x509Authorities) {
        const b64 = Buffer.from(der).toString("base64");
        if (certNotAfter(der) > t && !revokedCerts.has(b64)) roots.set(b64, der);
      }
      for (const [kid, key] of base.jwtAuthorities) {
        if (revokedJwt.has(kid)) continue;
        const notAfter = journaledJwt.get(kid) ?? this.#retiredJwt.get(kid)?.notAfter.getTime() ?? this.#jwt.find((a) => a.keyId === kid)?.notAfter.getTime();
        if (notAfter !== undefined) {
          if (notAfter > t) jwtKeys.set(kid, key);
          continue;
        }
        const since = this.#unjournaledJwt.get(kid) ?? t;
        this.#unjournaledJwt.set(kid, since);
        if (t - since < UNJOURNALED_JWT_KEY_GRACE_MS) jwtKeys.set(kid, key);
      }
    }
    for (const kid of this.#unjournaledJwt.keys()) if (!base?.jwtAuthorities.has(kid)) this.#unjournaledJwt.delete(kid);
    // Other servers' authorities (and this one's, which are also below).
    for (const r of journal) {
      if (r.notAfter.getTime() <= t || r.status === "revoked") continue;
      if (r.kind === "x509") {
        for (const der of r.rootDers.length > 0 ? r.rootDers : r.certDer ? [r.certDer] : []) roots.set(Buffer.from(der).toString("base64"), der);
      } else if (r.serverId !== this.#serverId && !jwtKeys.has(r.keyId)) {
        try {
          jwtKeys.set(r.keyId, createPublicKey({ key: Buffer.from(r.publicKeyDer), format: "der", type: "spki" }));
        } catch {
          this.#d.log?.warn({ key_id: r.keyId, server_id: r.serverId }, "ca: a journal record's JWT public key is unreadable; not published");
        }
      }
    }
    for (const a of this.#x509) for (const r of a.rootDers) roots.set(Buffer.from(r).toString("base64"), r);
    if (this.#upstreamRoots) {
      for (const [b64, der] of this.#upstreamRoots) if (certNotAfter(der) > t) roots.set(b64, der);
      for (const b64 of [...roots.keys()]) if (this.#withdrawnUpstreamRoot(b64)) roots.delete(b64);
    }
    for (const [kid, r] of this.#retiredJwt) {
      if (revokedJwt.has(kid)) continue;
      if (r.notAfter.getTime() > t) jwtKeys.set(kid, r.key);
      // Kept past its expiry as long as an unjournaled key would be: while the stored bundle may
      // still hold it, its known notAfter (not the unjournaled grace) decides that it goes.
      else if (r.notAfter.getTime() + UNJOURNALED_JWT_KEY_GRACE_MS <= t) this.#retiredJwt.delete(kid);
    }
    for (const a of this.#jwt) jwtKeys.set(a.keyId, a.signer.publicKey);
    return {
      trustDomain: this.#s.trustDomain,
      x509Authorities: [...roots.values()],
      jwtAuthorities: jwtKeys,
      sequenceNumber: base?.sequenceNumber ?? 0n,
      ...(this.#s.refreshHintSeconds !== undefined ? { refreshHintSeconds: this.#s.refreshHintSeconds } : { refreshHintSeconds: 300 }),
    };
  }

  #adopt(bundle: SpiffeBundle): void {
    this.#bundle = bundle;
    for (const l of this.#bundleListeners) l(bundle);
  }

  /** The current own-trust-domain bundle. */
  bundle(): SpiffeBundle {
    if (!this.#bundle) throw new SigilError("ERR_UNAVAILABLE", "ca: not started");
    return this.#bundle;
  }

  /** Subscribes to bundle changes; returns an unsubscribe function. */
  onBundleChange(listener: (b: SpiffeBundle) => void): () => void {
    this.#bundleListeners.add(listener);
    return () => this.#bundleListeners.delete(listener);
  }

  /** All X.509 authorities (for status display and metrics). */
  x509Authorities(): readonly X509Authority[] {
    return this.#x509;
  }

  /** The intermediates of every X.509 authority ({@link chainWithoutRoots}), which chains this CA signed may need to verify. */
  intermediates(): Uint8Array[] {
    return this.#x509.flatMap(chainWithoutRoots);
  }

  /** All JWT authorities. */
  jwtAuthorities(): readonly JwtAuthority[] {
    return this.#jwt;
  }

  #activeX509(): X509Authority {
    const a = this.#x509.find((x) => x.status === "active");
    if (!a?.template) throw new SigilError("ERR_UNAVAILABLE", "ca: no active X.509 authority");
    this.#refuseExpired("X.509", a);
    return a;
  }

  #activeJwt(): JwtAuthority {
    const a = this.#jwt.find((x) => x.status === "active");
    if (!a) throw new SigilError("ERR_UNAVAILABLE", "ca: no active JWT authority");
    this.#refuseExpired("JWT", a);
    return a;
  }

  /**
   * An active authority past its notAfter (the rotation step that replaces it
   * has not run yet) signs nothing: what it signed would be expired on
   * arrival. The caller retries; the rotation job is asked to run now.
   */
  #refuseExpired(what: string, a: X509Authority | JwtAuthority): void {
    if (a.notAfter.getTime() > this.#d.clock.now().getTime()) return;
    this.#d.onActiveExpired?.();
    throw new SigilError("ERR_UNAVAILABLE", `ca: the active ${what} authority ${a.keyId} expired at ${a.notAfter.toISOString()}; its successor is being activated, retry shortly`);
  }

  /**
   * Signs an X509-SVID for `spiffeId` with the given SubjectPublicKeyInfo. The
   * lifetime is capped at the signing CA's notAfter: an SVID never outlives its CA.
   */
  signX509Svid(req: X509SvidRequest): IssuedX509 {
    const ca = this.#activeX509();
    const leaf = this.#prepareLeaf(ca, req);
    return leaf.done((ca.template as LeafTemplate).tbs.sign(leaf.tbs, ca.signer));
  }

  /**
   * Signs several X509-SVIDs with one CA authority. The signatures are made on
   * the key manager's signing threads when it has them (in one hand-over),
   * in-line otherwise. Never rejects: each result is the SVID or the error
   * that refused its request (no active CA or a failed signature refuses
   * every request it affects).
   */
  async signX509SvidBatch(reqs: readonly X509SvidRequest[]): Promise<(IssuedX509 | SigilError)[]> {
    if (reqs.length === 0) return [];
    let ca: X509Authority;
    try {
      ca = this.#activeX509();
    } catch (e) {
      const err = asSigilError(e);
      return reqs.map(() => err);
    }
    const template = ca.template as LeafTemplate;
    const options = template.tbs.signatureAlgorithm.signOptions;
    const prepared = reqs.map((req) => {
      try {
        return this.#prepareLeaf(ca, req);
      } catch (e) {
        return asSigilError(e);
      }
    });
    const ready = prepared.filter((p): p is PreparedLeaf => !(p instanceof SigilError));
    let signatures: (Uint8Array | SigilError)[];
    if (ca.signer.signBatch && ready.length > 1) {
      try {
        signatures = await ca.signer.signBatch(
          ready.map((p) => p.tbs),
          options,
        );
      } catch (e) {
        const err = asSigilError(e);
        signatures = ready.map(() => err);
      }
    } else {
      signatures = ready.map((p) => {
        try {
          return ca.signer.sign(p.tbs, options);
        } catch (e) {
          return asSigilError(e);
        }
      });
    }
    let next = 0;
    return prepared.map((p) => {
      if (p instanceof SigilError) return p;
      const sig = signatures[next++] as Uint8Array | SigilError;
      return sig instanceof SigilError ? sig : p.done(finishLeaf(template, p.tbs, sig));
    });
  }

  /**
   * Signs an intermediate CA certificate for a downstream (nested) server's
   * key with the active X.509 authority: CA:true without a path length limit
   * (a child may have children of its own), URI SAN `spiffe://<td>`. Its
   * lifetime is capped at the signing CA's notAfter. The chain holds the new
   * CA and the signing authority's chain without its root.
   *
   * @throws SigilError `ERR_UNAVAILABLE` without an active X.509 authority; `ERR_X509_BUILD` for a key it cannot certify
   */
  signDownstreamX509Ca(req: DownstreamX509CaRequest): IssuedX509 {
    const ca = this.#activeX509();
    const now = this.#d.clock.now().getTime();
    const serialBytes = randomSerial();
    const certDer = createIntermediateCa({
      trustDomain: this.#s.trustDomain,
      subjectPublicKey: req.publicKeyDer,
      issuerCertDer: ca.certDer,
      issuerSigner: ca.signer,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(Math.min(now + req.ttlMs, ca.notAfter.getTime())),
      serial: serialBytes,
    });
    // The certificate's own (whole-second, clamped) validity is what is recorded.
    const cert = new X509Certificate(certDer);
    return {
      chain: [certDer, ...chainWithoutRoots(ca)],
      serial: canonicalSerialHex(Buffer.from(serialBytes).toString("hex")),
      notBefore: new Date(cert.validFrom),
      notAfter: new Date(cert.validTo),
      caKeyId: ca.keyId,
    };
  }

  /** Builds a leaf's TBSCertificate; `done` turns the finished certificate into the issuance result. */
  #prepareLeaf(ca: X509Authority, req: X509SvidRequest): PreparedLeaf {
    const now = this.#d.clock.now().getTime();
    const notAfter = new Date(Math.min(now + req.ttlMs, ca.notAfter.getTime()));
    const notBefore = new Date(now - BACKDATE_MS);
    const serialBytes = randomSerial();
    const tbs = buildLeafTbs(ca.template as LeafTemplate, {
      spiffeId: req.spiffeId,
      subjectPublicKeyDer: req.publicKeyDer,
      serial: serialBytes,
      notBefore,
      notAfter,
      ...(req.dnsNames && req.dnsNames.length ? { dnsNames: req.dnsNames } : {}),
    });
    const sendChain = chainWithoutRoots(ca);
    const serial = canonicalSerialHex(Buffer.from(serialBytes).toString("hex"));
    return { tbs, done: (leaf) => ({ chain: [leaf, ...sendChain], serial, notBefore, notAfter, caKeyId: ca.keyId }) };
  }

  /** Signs a JWT-SVID; its expiry is capped at the signing key's notAfter. */
  signJwtSvid(req: JwtSvidRequest): IssuedJwt {
    const key = this.#activeJwt();
    const now = this.#d.clock.now();
    const expiresAt = new Date(Math.min(now.getTime() + req.ttlMs, key.notAfter.getTime()));
    const token = signJwtSvid({
      spiffeId: req.spiffeId,
      audience: [...req.audience],
      expiresAt,
      issuedAt: now,
      signer: key.signer,
      ...(this.#s.jwtIssuer ? { extraClaims: { iss: this.#s.jwtIssuer } } : {}),
    });
    return { token, expiresAt, issuedAt: now, keyId: key.keyId };
  }
}

function sha256Hex(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

/** A journal row as an {@link AuthorityView}. */
function viewOfRow(r: CaJournalRecord): AuthorityView {
  return {
    serverId: r.serverId,
    kind: r.kind,
    slotId: r.slotId,
    keyId: r.keyId,
    status: r.status,
    notBefore: r.notBefore,
    notAfter: r.notAfter,
    ...(r.certDer ? { certDer: r.certDer } : {}),
    upstream: r.kind === "x509" && r.certDer !== undefined && r.rootDers.length > 0 && !r.rootDers.some((d) => Buffer.from(d).equals(Buffer.from(r.certDer as Uint8Array))),
    spkiSha256: sha256Hex(r.publicKeyDer),
  };
}

function sameAuthorities(a: SpiffeBundle, b: SpiffeBundle): boolean {
  if (a.x509Authorities.length !== b.x509Authorities.length || a.jwtAuthorities.size !== b.jwtAuthorities.size) return false;
  const ax = new Set(a.x509Authorities.map((d) => Buffer.from(d).toString("base64")));
  if (!b.x509Authorities.every((d) => ax.has(Buffer.from(d).toString("base64")))) return false;
  for (const kid of b.jwtAuthorities.keys()) if (!a.jwtAuthorities.has(kid)) return false;
  return a.refreshHintSeconds === b.refreshHintSeconds;
}

function certNotAfter(der: Uint8Array): number {
  try {
    return new Date(new X509Certificate(der).validTo).getTime();
  } catch {
    return 0;
  }
}
