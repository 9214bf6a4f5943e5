/**
 * The per-entry audit of `log verify`: allow-list patterns, SVIDs of a CA
 * under an upstream root verified through the CA certificate the log itself
 * recorded, a certificate that names another ID or serial than its entry,
 * `delivered` entries that do not match the credential they refer to, and
 * entries that are not Sigil entries.
 */
import { describe, expect, it } from "vitest";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { generateSigner } from "../../../../spiffe/signer.js";
import { SigilEntryAuditor, SpiffeIdAllowList, trustDomainOfOrigin, type AuditFinding } from "../../../../spiffe/tlog/sigil-audit.js";
import { encodeLogEntry, type SigilLogEntry } from "../../../../spiffe/tlog/sigil-entry.js";
import { createIntermediateCa, createRootCa } from "../../../../spiffe/x509/ca.js";
import { issueLeaf, prepareLeafTemplate } from "../../../../spiffe/x509/leaf.js";

const td = parseTrustDomain("example.org");
const T0 = Math.floor(Date.UTC(2026, 0, 1) / 1000);
const at = (s: number): Date => new Date(s * 1000);

describe("SpiffeIdAllowList", () => {
  it("matches exact IDs, * within a segment and ** across, ignoring comments and blank lines", () => {
    const l = new SpiffeIdAllowList("# comment\n\nspiffe://example.org/db\nspiffe://example.org/ns/*/sa/web\nspiffe://example.org/agent/**\n");
    expect(l.allows("spiffe://example.org/db")).toBe(true);
    expect(l.allows("spiffe://example.org/db2")).toBe(false);
    expect(l.allows("spiffe://example.org/ns/prod/sa/web")).toBe(true);
    expect(l.allows("spiffe://example.org/ns/prod/x/sa/web")).toBe(false);
    expect(l.allows("spiffe://example.org/agent/k8s/c1/n1")).toBe(true);
    // The pattern's "." is literal.
    expect(l.allows("spiffe://exampleXorg/ns/prod/sa/web")).toBe(false);
    expect(l.allows("spiffe://example.org/nsXprod/sa/web")).toBe(false);
  });

  it("refuses a line that is not a SPIFFE ID, naming the file and line", () => {
    expect(() => new SpiffeIdAllowList("spiffe://example.org/a\n/etc/passwd\n", "ids.txt")).toThrow(/log verify: ids\.txt line 2: "\/etc\/passwd" is not a spiffe:\/\/ ID/);
  });

  it("takes the trust domain from a Sigil origin", () => {
    expect(trustDomainOfOrigin("example.org/sigil/issuance")).toBe("example.org");
    expect(() => trustDomainOfOrigin("go.sum database tree")).toThrow(/give the trust domain/);
  });
});

describe("SigilEntryAuditor", () => {
  const upstreamSigner = generateSigner("ec-p256");
  const upstreamDer = createRootCa({ trustDomain: td, notBefore: at(T0 - 86400), notAfter: at(T0 + 86400 * 365), signer: upstreamSigner });
  const caSigner = generateSigner("ec-p256");
  const caDer = createIntermediateCa({ trustDomain: td, notBefore: at(T0 - 3600), notAfter: at(T0 + 86400), subjectPublicKey: caSigner.publicKey, issuerCertDer: upstreamDer, issuerSigner: upstreamSigner });
  const template = prepareLeafTemplate({ issuerCertDer: caDer, issuerSigner: caSigner });
  const leaf = (id: string, serial: bigint): string =>
    Buffer.from(
      issueLeaf(template, { spiffeId: parseSpiffeId(id), subjectPublicKeyDer: generateSigner("ec-p256").publicKey.export({ type: "spki", format: "der" }), serial, notBefore: at(T0), notAfter: at(T0 + 3600) }),
    ).toString("base64");
  const AGENT = "spiffe://example.org/spire/agent/x";
  const svid = (id: string, serial: bigint, cert = leaf(id, serial), agentId = AGENT): SigilLogEntry => ({
    v: 1,
    kind: "x509-svid",
    serial: serial.toString(16),
    spiffeId: id,
    agentId,
    notBefore: T0,
    notAfter: T0 + 3600,
    issuedAt: T0,
    cert,
  });

  function audit(entries: readonly (SigilLogEntry | Uint8Array)[], allow?: string): AuditFinding[] {
    const found: AuditFinding[] = [];
    const a = new SigilEntryAuditor({ trustDomain: td, x509Authorities: [upstreamDer], ...(allow === undefined ? {} : { allowIds: new SpiffeIdAllowList(allow) }), onFinding: (f) => found.push(f) });
    entries.forEach((e, i) => a.onEntry(i, e instanceof Uint8Array ? e : encodeLogEntry(e)));
    expect(a.entries).toBe(entries.length);
    return found;
  }

  const activated: SigilLogEntry = { v: 1, kind: "authority", event: "activated", authorityKind: "x509", authorityKeyId: "x509-1", serverId: "spiffe://example.org/spire/server", at: T0 - 60, cert: Buffer.from(caDer).toString("base64") };

  it("verifies SVIDs of a CA under the upstream root through the CA certificate logged before them", () => {
    expect(audit([activated, svid("spiffe://example.org/w", 10n)])).toEqual([]);
    // Without the authority entry the leaf has no path to the bundle.
    expect(audit([svid("spiffe://example.org/w", 10n)]).map((f) => [f.index, f.kind])).toEqual([[0, "unchained"]]);
  });

  it("reports a CA certificate that does not chain to the bundle", () => {
    const rogue = createRootCa({ trustDomain: td, notBefore: at(T0 - 60), notAfter: at(T0 + 3600), signer: generateSigner("ec-p256") });
    const f = audit([{ ...activated, cert: Buffer.from(rogue).toString("base64") } as SigilLogEntry]);
    expect(f).toMatchObject([{ index: 0, kind: "unchained", entryKind: "authority" }]);
    expect(f[0]?.message).toMatch(/is neither in the trust bundle of example\.org nor signed by it/);
  });

  it("reports a delivered entry that refers to an issuance entry not before it, and accepts one that does", () => {
    const delivered = (issuanceIndex: number): SigilLogEntry => ({ v: 1, kind: "delivered", serial: "a", spiffeId: "spiffe://example.org/w", agentId: "spiffe://example.org/spire/agent/x", deliveredAt: T0, issuanceIndex });
    expect(audit([activated, svid("spiffe://example.org/w", 10n), delivered(1)])).toEqual([]);
    expect(audit([activated, svid("spiffe://example.org/w", 10n), delivered(2)]).map((f) => [f.index, f.kind, f.message])).toEqual([
      [2, "mismatch", "log verify: entry 2: delivered spiffe://example.org/w serial a: refers to issuance entry 2, which is not before it"],
    ]);
  });

  it("reports a delivered entry that refers to another credential, or names another agent or ID than its credential's entry, naming both indices", () => {
    const OTHER_AGENT = "spiffe://example.org/spire/agent/y";
    const jwtHash = (c: string): string => c.repeat(64);
    const jwt = (id: string, hash: string, agentId: string): SigilLogEntry => ({ v: 1, kind: "jwt-svid", jwtSha256: hash, spiffeId: id, agentId, audience: ["db"], notBefore: T0, notAfter: T0 + 300, issuedAt: T0 });
    const delivered = (name: { serial: string } | { jwtSha256: string }, spiffeId: string, agentId: string, issuanceIndex: number): SigilLogEntry => ({
      v: 1,
      kind: "delivered",
      ...name,
      spiffeId,
      agentId,
      deliveredAt: T0,
      issuanceIndex,
    });
    const log: SigilLogEntry[] = [
      activated,
      svid("spiffe://example.org/w", 10n), // 1
      svid("spiffe://example.org/db", 11n, leaf("spiffe://example.org/db", 11n), OTHER_AGENT), // 2
      jwt("spiffe://example.org/w", jwtHash("c"), AGENT), // 3
      delivered({ serial: "a" }, "spiffe://example.org/w", AGENT, 1), // 4: sound
      delivered({ jwtSha256: jwtHash("c") }, "spiffe://example.org/w", AGENT, 3), // 5: sound
      delivered({ serial: "b" }, "spiffe://example.org/db", OTHER_AGENT, 1), // 6: points at serial a's entry
      delivered({ serial: "a" }, "spiffe://example.org/w", OTHER_AGENT, 1), // 7: another agent
      delivered({ serial: "a" }, "spiffe://example.org/admin", AGENT, 1), // 8: another ID
      delivered({ serial: "ff" }, "spiffe://example.org/w", AGENT, 2), // 9: no such credential
      delivered({ jwtSha256: jwtHash("d") }, "spiffe://example.org/w", AGENT, 3), // 10: another JWT
    ];
    expect(audit(log).map((f) => [f.index, f.kind, f.message])).toEqual([
      [6, "mismatch", "log verify: entry 6: delivered spiffe://example.org/db serial b: refers to issuance entry 1, but the credential is logged at entry 2"],
      [7, "mismatch", `log verify: entry 7: delivered spiffe://example.org/w serial a: issuance entry 1 issued it to agent ${AGENT}, not to ${OTHER_AGENT}`],
      [8, "mismatch", "log verify: entry 8: delivered spiffe://example.org/admin serial a: issuance entry 1 is for spiffe://example.org/w"],
      [9, "mismatch", "log verify: entry 9: delivered spiffe://example.org/w serial ff: refers to issuance entry 2, but no x509-svid entry before it is that credential"],
      [10, "mismatch", `log verify: entry 10: delivered spiffe://example.org/w jwt ${jwtHash("d")}: refers to issuance entry 3, but no jwt-svid entry before it is that credential`],
    ]);
  });

  it("reports a certificate naming another SPIFFE ID or serial than its entry", () => {
    const other = leaf("spiffe://example.org/other", 11n);
    const f = audit([activated, svid("spiffe://example.org/w", 11n, other), svid("spiffe://example.org/w", 12n, leaf("spiffe://example.org/w", 13n))]);
    expect(f.map((x) => [x.index, x.kind])).toEqual([
      [1, "mismatch"],
      [2, "mismatch"],
    ]);
    expect(f[0]?.message).toMatch(/the certificate names spiffe:\/\/example\.org\/other/);
    expect(f[1]?.message).toMatch(/the certificate has serial d/);
  });

  it("reports entries that are not Sigil entries, IDs of another trust domain and IDs outside the allow list", () => {
    const jwt: SigilLogEntry = { v: 1, kind: "jwt-svid", jwtSha256: "a".repeat(64), spiffeId: "spiffe://evil.org/w", notBefore: T0, notAfter: T0 + 60, issuedAt: T0, audience: ["x"] };
    const unlisted: SigilLogEntry = { ...jwt, spiffeId: "spiffe://example.org/unlisted" } as SigilLogEntry;
    const f = audit([Buffer.from('{"kind":"x509-svid", "v":1}'), jwt, unlisted], "spiffe://example.org/w\nspiffe://evil.org/w\n");
    expect(f.map((x) => [x.index, x.kind])).toEqual([
      [0, "undecodable"],
      [1, "outside-trust-domain"],
      [2, "not-allowed"],
    ]);
  });
  it("reports an X.509 entry that logged no certificate when a bundle is given", () => {
    const { cert: _cert, ...bare } = svid("spiffe://example.org/w", 20n) as SigilLogEntry & { cert?: string };
    const f = audit([activated, bare as SigilLogEntry, { ...bare, kind: "downstream-ca" } as SigilLogEntry]);
    expect(f.map((x) => [x.index, x.kind, x.entryKind])).toEqual([
      [1, "missing-certificate", "x509-svid"],
      [2, "missing-certificate", "downstream-ca"],
    ]);
    expect(f[0]?.message).toMatch(/the entry has no certificate to check against the trust bundle/);
    // Without a bundle there is nothing to check a certificate against.
    const found: AuditFinding[] = [];
    new SigilEntryAuditor({ trustDomain: td, onFinding: (x) => found.push(x) }).onEntry(0, encodeLogEntry(bare as SigilLogEntry));
    expect(found).toEqual([]);
  });

  it("escapes terminal controls, bidi marks and line separators of a logged SPIFFE ID in messages", () => {
    const jwt: SigilLogEntry = { v: 1, kind: "jwt-svid", jwtSha256: "a".repeat(64), spiffeId: "spiffe://evil.org/w\u001b[2J\u202e\u2028\u007f\u0085", notBefore: T0, notAfter: T0 + 60, issuedAt: T0, audience: ["x"] };
    const f = audit([jwt]);
    expect(f).toHaveLength(1);
    expect(f[0]?.message).toContain("spiffe://evil.org/w\\u001b[2J\\u202e\\u2028\\u007f\\u0085: the ID is not in trust domain example.org");
    expect(f[0]?.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u202e\u2028]/);
  });
});
