/**
 * `CaManager.signDownstreamX509Ca`: a downstream server's intermediate is a
 * CA of the trust domain (CA:true, no path length limit, URI SAN
 * `spiffe://<td>`) for the key it was asked for, signed by the active
 * authority, and never outlives it.
 */
import path from "node:path";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { systemClock } from "../../../../common/clock.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import { CaManager } from "../../../../server/ca/manager.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { canonicalSerialHex } from "../../../../spiffe/x509/serial.js";
import { testTempDir } from "../../../support/temp-dir.js";

let store: Datastore | undefined;
afterEach(async () => {
  await store?.close();
  store = undefined;
});

async function startedCa(caTtlMs: number): Promise<CaManager> {
  store = await createSqliteDatastore({ path: path.join(testTempDir("sigil-downstream-ca-"), "ds.sqlite3"), clock: systemClock });
  const ca = new CaManager({ trustDomain: parseTrustDomain("example.org"), caTtlMs, caKeyType: "ec-p256", jwtKeyType: "ec-p256" }, { keyManager: createMemoryKeyManager(), store, clock: systemClock });
  await ca.start();
  return ca;
}

describe("CaManager.signDownstreamX509Ca", () => {
  it("signs a CA certificate of the trust domain for the given key under the active root", async () => {
    const ca = await startedCa(3_600_000);
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
    const issued = ca.signDownstreamX509Ca({ publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })), ttlMs: 600_000 });
    expect(issued.chain).toHaveLength(1); // the root is never sent
    const cert = new X509Certificate(issued.chain[0] as Uint8Array);
    const root = new X509Certificate(ca.bundle().x509Authorities[0] as Uint8Array);
    expect(cert.ca).toBe(true);
    expect(cert.subjectAltName).toBe("URI:spiffe://example.org");
    expect(cert.publicKey.equals(publicKey)).toBe(true);
    expect(cert.checkIssued(root) && cert.verify(root.publicKey)).toBe(true);
    expect(canonicalSerialHex(cert.serialNumber)).toBe(issued.serial);
    expect(issued.notAfter.getTime()).toBe(Date.parse(cert.validTo));
    expect(issued.notAfter.getTime() - Date.now()).toBeLessThanOrEqual(600_000);
    expect(issued.caKeyId).toBe(ca.x509Authorities().find((a) => a.status === "active")?.keyId);
  });

  it("caps the lifetime at the signing authority's notAfter", async () => {
    const ca = await startedCa(120_000);
    const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const issued = ca.signDownstreamX509Ca({ publicKeyDer: new Uint8Array(publicKey.export({ format: "der", type: "spki" })), ttlMs: 86_400_000 });
    const active = ca.x509Authorities().find((a) => a.status === "active");
    expect(issued.notAfter.getTime()).toBeLessThanOrEqual(active?.notAfter.getTime() ?? 0);
  });
});
