/**
 * The downstream API's admission, in-process with a real CA: who may ask for
 * an intermediate (an SVID whose ID has an unexpired entry marked downstream),
 * the rate limit charged to the caller's ID before anything is signed, and
 * that nothing is signed for a refused call. The wire path and the log entry
 * are test/integration/downstream-ca.test.ts.
 */
import path from "node:path";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { status, type ServiceError } from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { ManualClock, systemClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { NewDownstreamX509CARequestSchema, type NewDownstreamX509CAResponse } from "../../../../proto/gen/sigil/agent/v1/downstream_pb.js";
import { createDownstreamApi } from "../../../../server/api/downstream-api.js";
import { RateLimiter, rateLimitCharger } from "../../../../server/api/rate-limit.js";
import { CaManager, type DownstreamX509CaRequest, type IssuedX509 } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore, type RegistrationEntry } from "../../../../server/datastore/index.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { testTempDir } from "../../../support/temp-dir.js";

const td = parseTrustDomain("example.org");
let store: Datastore | undefined;
afterEach(async () => {
  await store?.close();
  store = undefined;
});

/** A downstream entry for `spiffe://example.org/child` (only the fields the API reads), with `over` applied. */
const entry = (over: Partial<RegistrationEntry> = {}): RegistrationEntry =>
  ({ id: "e1", spiffeId: "spiffe://example.org/child", downstream: true, expiresAt: null, revision: 1, ...over }) as unknown as RegistrationEntry;

async function setUp(entries: RegistrationEntry[]) {
  store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-downstream-api-"), "ds.sqlite3"), clock: systemClock });
  const ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock });
  await ca.start();
  const signed: DownstreamX509CaRequest[] = [];
  const api = createDownstreamApi({
    trustDomain: td,
    // Only what the caller's ID and the downstream flag select, as the datastore filter does.
    datastore: { listEntries: async (r) => ({ items: entries.filter((e) => e.spiffeId === r?.filter?.spiffeId && e.downstream === r.filter.downstream) }) },
    ca,
    issuer: {
      downstreamX509Ca: async (_caller, _entry, req) => {
        signed.push(req);
        return ca.signDownstreamX509Ca(req);
      },
    },
    rateLimits: { x509Signing: new RateLimiter({ perSecond: 1, burst: 1, clock: new ManualClock(new Date()) }) },
    charge: rateLimitCharger(new Metrics()),
    downstreamCaTtlMs: 600_000,
    now: () => new Date(),
    log: createLogger({ level: "error", destination: { write: () => undefined } }),
    auditEnabled: false,
  });
  /** Calls NewDownstreamX509CA presenting an SVID for `id` (none when undefined). */
  const call = (id: string | undefined): Promise<NewDownstreamX509CAResponse> => {
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const raw = id === undefined ? undefined : Buffer.from(ca.signX509Svid({ spiffeId: parseSpiffeId(id), publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })), ttlMs: 60_000 }).chain[0] as Uint8Array);
    const request = create(NewDownstreamX509CARequestSchema, { key: { case: "publicKey", value: publicKey.export({ format: "der", type: "spki" }) } });
    return new Promise((resolve, reject) => {
      const fake = { request, getAuthContext: () => ({ sslPeerCertificate: raw === undefined ? undefined : { raw } }) };
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

  it("charges the x509_signing limit to the caller's ID: over it is ResourceExhausted and nothing is signed", async () => {
    const { call, signed } = await setUp([entry()]);
    await call("spiffe://example.org/child");
    // The limiter's clock does not move: the one token of the burst is spent.
    const err = await refused(call("spiffe://example.org/child"));
    expect([err.code, err.details]).toEqual([status.RESOURCE_EXHAUSTED, expect.stringContaining("rate limit: spiffe://example.org/child asked for more than 1 X.509 certificates per second")]);
    expect(signed).toHaveLength(1);
  });
});
