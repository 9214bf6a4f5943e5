/**
 * The server's own X509-SVID renews itself at half life on its own timer, not
 * only when the CA rotation job (every 10 s) calls `refresh`: with an SVID TTL
 * as short as that interval, the agent API's certificate used to expire
 * between two steps.
 */
import path from "node:path";
import { X509Certificate } from "node:crypto";
import { afterEach, describe, expect, it, vi } from "vitest";
import { systemClock } from "../../../../common/clock.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { ServerSvidService } from "../../../../server/api/server-svid.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { testTempDir } from "../../../support/temp-dir.js";

const td = parseTrustDomain("example.org");
let store: Datastore | undefined;
let svid: ServerSvidService | undefined;

afterEach(async () => {
  svid?.stop();
  await store?.close();
});

describe("ServerSvidService", () => {
  it("re-issues the SVID at half life without a refresh call, and stops renewing after stop()", async () => {
    store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-server-svid-"), "ds.sqlite3"), clock: systemClock });
    const ca = new CaManager({ trustDomain: td, caTtlMs: 3_600_000, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock });
    await ca.start();
    svid = new ServerSvidService({ ca: { manager: ca }, serverId: parseSpiffeId("spiffe://example.org/spire/server"), ttlMs: 4_000, clock: systemClock });
    svid.start();
    const serial = (): string => new X509Certificate(svid?.certificates.identity?.certificate ?? Buffer.alloc(0)).serialNumber;
    const first = serial();
    // Nobody calls refresh(): the service's own timer renews it before it expires.
    await vi.waitFor(() => expect(serial()).not.toBe(first), { timeout: 10_000, interval: 50 });
    // notAfter has whole-second precision, so with a 4 s TTL the renewed
    // certificate still has more than two seconds left.
    const cert = new X509Certificate(svid.certificates.identity?.certificate ?? Buffer.alloc(0));
    expect(new Date(cert.validTo).getTime()).toBeGreaterThan(Date.now() + 1_000);
    svid.stop();
    const last = serial();
    await new Promise((r) => setTimeout(r, 2_500));
    expect(serial()).toBe(last);
  });
});
