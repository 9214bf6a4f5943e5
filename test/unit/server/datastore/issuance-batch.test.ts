import { describe, expect, it } from "vitest";
import { IssuanceNormalizer } from "../../../../server/datastore/issuance-batch.js";
import type { IssuanceInput } from "../../../../server/datastore/index.js";
import { isSigilError } from "../../../../spiffe/errors.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = "spiffe://example.org/spire/agent/join_token/t1";

let serial = 0x1000;
function rec(over: Partial<IssuanceInput> = {}): IssuanceInput {
  return {
    serial: (serial++).toString(16),
    kind: "x509-svid",
    spiffeId: "spiffe://example.org/web",
    entryId: "entry-web",
    agentId: AGENT,
    caKeyId: "x509-ca-A",
    notBefore: T0,
    notAfter: new Date(T0.getTime() + 3_600_000),
    issuedAt: T0,
    selectors: ["unix:uid:1000"],
    requestedBy: `agent:${AGENT}`,
    ...over,
  };
}

function refusal(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(isSigilError(e) && e.code === "ERR_INVALID_ARGUMENT").toBe(true);
    return (e as Error).message;
  }
  throw new Error("expected a refusal");
}

describe("IssuanceNormalizer", () => {
  it("keys a context by the JSON of its normalised fields in stored order (the stored context hash is of this key)", () => {
    const [ctx] = new IssuanceNormalizer().normalize([rec({ selectors: ["unix:uid:1000", "k8s:ns:a"] })]).contexts;
    expect(ctx?.key).toBe(JSON.stringify(["x509-svid", "spiffe://example.org/web", "entry-web", AGENT, "x509-ca-A", JSON.stringify(["k8s:ns:a", "unix:uid:1000"]), `agent:${AGENT}`, ""]));
    const [agentSvid] = new IssuanceNormalizer().normalize([rec({ kind: "agent-svid", spiffeId: AGENT, entryId: null, selectors: [], requestedBy: "attestation:join_token" })]).contexts;
    expect(agentSvid).toEqual({ key: JSON.stringify(["agent-svid", AGENT, "", AGENT, "x509-ca-A", "[]", "attestation:join_token", ""]), kind: "agent-svid", spiffeId: AGENT, entryId: "", agentId: AGENT, caKeyId: "x509-ca-A", selectors: "[]", requestedBy: "attestation:join_token", audience: "" });
  });

  it("reuses a known context for records that differ only in their own fields, normal form or not", () => {
    const n = new IssuanceNormalizer();
    const first = n.normalize([rec()]).contexts[0];
    const again = n.normalize([rec({ serial: "abcdef" })]);
    expect(again.contexts[0]).toBe(first);
    expect(again.rows).toEqual([0, "abcdef", T0.getTime(), T0.getTime() + 3_600_000, T0.getTime(), null]);
    // Selectors out of order: cached under what was given, keyed by the normal form.
    const unsorted = n.normalize([rec({ selectors: ["unix:uid:1000", "k8s:ns:a"] })]).contexts[0];
    expect(n.normalize([rec({ selectors: ["unix:uid:1000", "k8s:ns:a"] })]).contexts[0]).toBe(unsorted);
    expect(unsorted?.selectors).toBe(JSON.stringify(["k8s:ns:a", "unix:uid:1000"]));
  });

  it("refuses an empty entry or agent ID even once the same context with the ID absent is known", () => {
    const n = new IssuanceNormalizer();
    n.normalize([rec({ entryId: null }), rec({ kind: "agent-svid", spiffeId: AGENT, entryId: null, agentId: null, selectors: [], requestedBy: "attestation:join_token" })]);
    expect(refusal(() => n.normalize([rec({ entryId: "" })]))).toMatch(/issuance\[0\] entryId/);
    expect(refusal(() => n.normalize([rec({ kind: "agent-svid", spiffeId: AGENT, entryId: null, agentId: "", selectors: [], requestedBy: "attestation:join_token" })]))).toMatch(/issuance\[0\] agentId/);
  });

  it("keeps a JWT-SVID's audience apart from an X509-SVID's absent one", () => {
    const n = new IssuanceNormalizer();
    n.normalize([rec()]);
    expect(refusal(() => n.normalize([rec({ audience: [] })]))).toMatch(/jwtId and audience apply to jwt-svid records only/);
    const jwt = n.normalize([rec({ kind: "jwt-svid", audience: ["b", "a"], jwtId: "j1" })]).contexts[0];
    expect(jwt?.audience).toBe(JSON.stringify(["b", "a"]));
    expect(jwt?.key).not.toBe(n.normalize([rec()]).contexts[0]?.key);
  });
});
