/**
 * The downstream API's admission, in-process with a real CA: who may ask for
 * an intermediate (an SVID whose ID has an unexpired entry marked downstream,
 * found in the entry index; an SVID another HA server's intermediate signed,
 * with that intermediate presented), the downstream_ca rate limit charged
 * to the caller before its entries are looked up (refusals included), and
 * that nothing is signed for a refused call. The wire path and the log entry
 * are test/integration/downstream-ca.test.ts.
 */
import path from "node:path";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { ManualClock, systemClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { createDiskUpstreamAuthority } from "../../../../plugins/upstreamauthority/disk/index.js";
import { NewDownstreamX509CARequestSchema, type NewDownstreamX509CAResponse } from "../../../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { createDownstreamApi } from "../../../../server/api/downstream-api.js";
import { RateLimiter, rateLimitCharger } from "../../../../server/api/rate-limit.js";
import { CaManager, type DownstreamX509CaRequest, type IssuedX509 } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore, type RegistrationEntry } from "../../../../server/datastore/index.js";
import { EntryIndex } from "../../../../server/registration/entry-index.js";
import { toIndexed } from "../../../../server/registration/entry-index-feed.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { testTempDir } from "../../../support/temp-dir.js";

const td = parseTrustDomain("example.org");
let stores: Datastore[] = [];
afterEach(async () => {
  for (const s of stores) await s.close();
  stores = [];
});

/** A downstream entry for `spiffe://example.org/child` (only the fields the API reads), with `over` applied. */
const entry = (over: Partial<RegistrationEntry> = {}): RegistrationEntry =>
  ({ id: "e1", spiffeId: "spiffe://example.org/child", parentId: "spiffe://example.org/spire/agent/x", selectors: [], downstream: true, expiresAt: null, revision: 1, ...over }) as unknown as RegistrationEntry;

/** A CA manager on its own SQLite store, under `upstream` when given. */
async function startCa(upstream?: Parameters<typeof createDiskUpstreamAuthority>[0]): Promise<CaManager> {
  const store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-downstream-api-"), "ds.sqlite3"), clock: systemClock });
  stores.push(store);
  const ca = new CaManager(
    { trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" },
    { keyManager: createMemoryKeyManager(), store, clock: systemClock, upstream: upstream && createDiskUpstreamAuthority(upstream) },
  );
  await ca.start();
  return ca;
}

/** A self-signed P-256 root CA in files, for the disk upstream authority. */
function upstreamRoot(): Parameters<typeof createDiskUpstreamAuthority>[0] {
  const dir = testTempDir("sigil-downstream-root-");
  const cert = path.join(dir, "root.pem");
  const key = path.join(dir, "root.key");
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=test upstream root", "-days", "1", "-keyout", key, "-out", cert,
    "-addext", "basicConstraints=critical,CA:true", "-addext", "keyUsage=critical,keyCertSign,cRLSign"], { stdio: "ignore" });
  return { cert_file_path: cert, key_file_path: key };
}

async function setUp(entries: RegistrationEntry[], opts: { ca?: CaManager; limiter?: RateLimiter } = {}) {
  const ca = opts.ca ?? (await startCa());
  const signed: DownstreamX509CaRequest[] = [];
  const index = new EntryIndex("spiffe://example.org/spire/server", entries.map(toIndexed));
  const api = createDownstreamApi({
    trustDomain: td,
    index,
    ca,
    issuer: {
      downstreamX509Ca: async (_caller, _entry, req) => {
        signed.push(req);
        return ca.signDownstreamX509Ca(req);
      },
    },
    rateLimits: { downstreamCa: opts.limiter ?? new RateLimiter({ perSecond: 1, burst: 1, clock: new ManualClock(new Date()) }) },
    charge: rateLimitCharger(new Metrics()),
    downstreamCaTtlMs: 600_000,
    now: () => new Date(),
    log: createLogger({ level: "error", destination: { write: () => undefined } }),
    auditEnabled: false,
  });
  /**
   * Calls NewDownstreamX509CA presenting an SVID for `id` (none when undefined) that `signer` (default:
   * the API's CA) signed, with its intermediates in the metadata when `presentChain`.
   */
  const call = (id: string | undefined, o: { signer?: CaManager; presentChain?: boolean } = {}): Promise<NewDownstreamX509CAResponse> => {
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const chain = id === undefined ? [] : (o.signer ?? ca).signX509Svid({ spiffeId: parseSpiffeId(id), publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })), ttlMs: 60_000 }).chain;
    const raw = chain[0] === undefined ? undefined : Buffer.from(chain[0]);
    const metadata = new Metadata();
    if (o.presentChain) for (const c of chain.slice(1)) metadata.add("sigil-agent-chain-bin", Buffer.from(c));
    const request = create(NewDownstreamX509CARequestSchema, { key: { case: "publicKey", value: publicKey.export({ format: "der", type: "spki" }) } });
    return new Promise((resolve, reject) => {
      const fake = { request, metadata, getPeer: () => "10.0.0.1:5000", getAuthContext: () => ({ sslPeerCertificate: raw === undefined ? undefined : { raw } }) };
      (api.newDownstreamX509CA as (c: unknown, cb: (e: ServiceError | null, r?: NewDownstreamX509CAResponse) => void) => void)(fake, (e, r) => (e ? reject(e) : resolve(r as NewDownstreamX509CAResponse)));
    });
  };
  return { call, signed };
}

async function refused(p: Promise<unknown>): Promise<ServiceError> {
  return p.then(
    () => {
      throw new Error("the call succeeded");
    },
    (e: unknown) => e as ServiceError,
  );
}

describe("DownstreamAPI admission", () => {
  it("signs for an entry marked downstream, capped at server.downstream_ca_ttl", async () => {
    const { call, signed } = await setUp([entry()]);
    const res = await call("spiffe://example.org/child");
    expect(signed.map((r) => r.ttlMs)).toEqual([600_000]);
    expect(new X509Certificate(res.caCertChain[0] as Uint8Array).ca).toBe(true);
  });

  it.each([
    ["no client certificate", undefined, [], "no client certificate"],
    ["an ID without a downstream entry", "spiffe://example.org/other", [], "spiffe://example.org/other has no registration entry marked downstream"],
    ["an entry not marked downstream", "spiffe://example.org/child", [{ downstream: false }], "has no registration entry marked downstream"],
    ["an expired downstream entry", "spiffe://example.org/child", [{ expiresAt: new Date(Date.now() - 1000) }], "has no registration entry marked downstream"],
    ["an agent", "spiffe://example.org/spire/agent/join_token/x", [{ spiffeId: "spiffe://example.org/spire/agent/join_token/x" }], "is an agent"],
  ])("refuses %s with PermissionDenied and signs nothing", async (_what, id, overrides, message) => {
    const entries = (overrides as Partial<RegistrationEntry>[]).map((o) => entry(o));
    const { call, signed } = await setUp(entries);
    const err = await refused(call(id));
    expect([err.code, err.details]).toEqual([status.PERMISSION_DENIED, expect.stringContaining(message)]);
    expect(signed).toEqual([]);
  });

  it("charges the downstream_ca limit to the caller's ID: over it is ResourceExhausted and nothing is signed", async () => {
    const { call, signed } = await setUp([entry()]);
    await call("spiffe://example.org/child");
    // The limiter's clock does not move: the one token of the burst is spent.
    const err = await refused(call("spiffe://example.org/child"));
    expect([err.code, err.details]).toEqual([status.RESOURCE_EXHAUSTED, expect.stringContaining("rate limit: spiffe://example.org/child made more than 1 calls per second")]);
    expect(signed).toHaveLength(1);
  });

  it("charges refusals too: a caller without a downstream entry is throttled after its burst, one without a valid SVID by source address", async () => {
    const limiter = new RateLimiter({ perSecond: 1, burst: 3, clock: new ManualClock(new Date()) });
    const { call, signed } = await setUp([entry()], { limiter });
    const codes: number[] = [];
    for (let i = 0; i < 4; i++) codes.push((await refused(call("spiffe://example.org/other"))).code as number);
    expect(codes).toEqual([status.PERMISSION_DENIED, status.PERMISSION_DENIED, status.PERMISSION_DENIED, status.RESOURCE_EXHAUSTED]);
    for (let i = 0; i < 3; i++) await refused(call(undefined));
    const err = await refused(call(undefined));
    expect([err.code, err.details]).toEqual([status.RESOURCE_EXHAUSTED, expect.stringContaining("rate limit: 10.0.0.1 made more than 1 calls per second")]);
    // Another caller has its own bucket.
    await call("spiffe://example.org/child");
    expect(signed).toHaveLength(1);
  });

  it("accepts an SVID another server's intermediate signed (upstream authority) when the caller presents that intermediate", async () => {
    const root = upstreamRoot();
    const [mine, other] = [await startCa(root), await startCa(root)];
    const limiter = new RateLimiter({ perSecond: 1, burst: 10, clock: new ManualClock(new Date()) });
    const { call, signed } = await setUp([entry()], { ca: mine, limiter });
    const err = await refused(call("spiffe://example.org/child", { signer: other }));
    expect([err.code, err.details]).toEqual([status.PERMISSION_DENIED, expect.stringContaining("client certificate is not a valid SVID of example.org")]);
    const res = await call("spiffe://example.org/child", { signer: other, presentChain: true });
    expect(new X509Certificate(res.caCertChain[0] as Uint8Array).ca).toBe(true);
    expect(signed).toHaveLength(1);
  });
});
