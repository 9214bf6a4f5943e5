import { describe, expect, it } from "vitest";
import { credentialEntry, credentialLogInputs, decodeLogEntry, toTlogInput, type LoggedCredential } from "../../../../server/tlog/entry.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = "spiffe://example.org/spire/agent/x";

function logged(serial: string, kind: "x509-svid" | "jwt-svid" | "agent-svid", extra: Partial<LoggedCredential> = {}): LoggedCredential {
  return {
    record: {
      serial, kind, spiffeId: kind === "agent-svid" ? AGENT : `spiffe://example.org/w/${serial}`, entryId: kind === "agent-svid" ? null : "e1", agentId: AGENT, caKeyId: "x509-CA-A",
      notBefore: T0, notAfter: new Date(T0.getTime() + 3_600_000), issuedAt: T0, selectors: ["unix:uid:1"], requestedBy: `agent:${AGENT}`,
      ...(kind === "jwt-svid" ? { audience: ["db"] } : {}),
    },
    ...(kind === "jwt-svid" ? { jwt: `token-${serial}` } : { certDer: Buffer.alloc(600 + serial.length, serial), publicKeyDer: Buffer.from(`spki-${serial}`) }),
    ...extra,
  };
}

describe("credentialLogInputs (the entries the issuer appends)", () => {
  it("gives each credential of a mixed batch (more than one shared buffer's worth) the bytes and lookup key of its entry alone", () => {
    const creds = [
      ...Array.from({ length: 30 }, (_, i) => logged(`a${i.toString(16)}`, "x509-svid", { entryRevision: i })),
      // A JWT entry (encoded apart) among X.509 ones laid end to end.
      logged("b1", "jwt-svid"),
      ...Array.from({ length: 30 }, (_, i) => logged(`f${i.toString(16)}`, "x509-svid")),
      logged("c1", "agent-svid", { evidenceSha256: "ab".repeat(32) }),
      logged("d1", "x509-svid", { kind: "server-svid" }),
      logged("e1", "x509-svid", { kind: "downstream-ca", certDer: undefined }),
    ];
    const got = credentialLogInputs(creds);
    // Encoded apart, each through the generic encoder.
    const want = creds.map((c) => toTlogInput(credentialEntry(c)));
    expect(got.map((e) => [e.lookupKey, Buffer.from(e.entry).toString("hex")])).toEqual(want.map((e) => [e.lookupKey, Buffer.from(e.entry).toString("hex")]));
    expect(decodeLogEntry(got[61]?.entry ?? new Uint8Array()).kind).toBe("agent-svid");
  });
});
