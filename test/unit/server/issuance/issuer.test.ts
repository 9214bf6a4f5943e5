/**
 * The issuer's audience checks (shared by the agent API and the admin mint)
 * and its refusal of a credential whose transparency-log entry would not fit.
 */
import { describe, expect, it } from "vitest";
import { makeSelector } from "../../../../common/selector.js";
import type { IssuedJwt } from "../../../../server/ca/manager.js";
import type { RegistrationEntry, TlogEntryInput } from "../../../../server/datastore/index.js";
import { Issuer, MAX_AUDIENCE_BYTES, MAX_AUDIENCES, mintAudienceProblem } from "../../../../server/issuance/issuer.js";
import { credentialEntry, toTlogInput } from "../../../../server/tlog/entry.js";
import { MAX_SELECTOR_VALUE_BYTES } from "../../../../common/selector.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const AGENT = "spiffe://example.org/spire/agent/join_token/a";

function entryWith(selectorCount: number): RegistrationEntry {
  return {
    id: "e1", spiffeId: "spiffe://example.org/w", parentId: AGENT,
    // The longest selector values, each quote and backslash escaped: about 2 KiB of an entry apiece.
    selectors: Array.from({ length: selectorCount }, (_, i) => makeSelector("unix", `${i}:${'"'.repeat(MAX_SELECTOR_VALUE_BYTES - 8)}`)),
    x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], federatesWith: [], admin: false, downstream: false, hint: "", expiresAt: null, createdAt: T0, updatedAt: T0, revision: 1,
  };
}

function issuer(logged: TlogEntryInput[]): Issuer {
  let n = 0;
  return new Issuer({
    ca: {
      signJwtSvid: (): IssuedJwt => ({ token: `a.b.${n++}`, issuedAt: T0, expiresAt: new Date(T0.getTime() + 300_000), keyId: "jwt-A" }),
      signDownstreamX509Ca: () => {
        throw new Error("not used");
      },
      signX509Svid: () => {
        throw new Error("not used");
      },
      signX509SvidBatch: () => {
        throw new Error("not used");
      },
    },
    datastore: { recordIssuances: async (_records, entries) => void logged.push(...(entries ?? [])) },
    now: () => T0,
    defaultX509TtlMs: 3_600_000,
    defaultJwtTtlMs: 300_000,
    transparencyLog: { credentialEntries: (creds) => creds.map((c) => toTlogInput(credentialEntry(c))), appended: () => undefined },
  });
}

describe("issuer", () => {
  it("accepts up to 32 audiences of 256 UTF-8 bytes and refuses control characters, naming the audience", () => {
    expect(mintAudienceProblem(Array.from({ length: MAX_AUDIENCES }, () => "é".repeat(MAX_AUDIENCE_BYTES / 2)))).toBeUndefined();
    expect(mintAudienceProblem([])).toEqual({ field: "audience", message: "at least one audience is required" });
    expect(mintAudienceProblem(["a", ""])).toEqual({ field: "audience[1]", message: "is empty" });
    expect(mintAudienceProblem(["a", "é".repeat(129)])).toEqual({ field: "audience[1]", message: "is longer than the maximum 256 bytes (258)" });
    expect(mintAudienceProblem(["a", "b", "x\u001b[2J"])).toEqual({ field: "audience[2]", message: "contains control character U+001b at offset 1" });
    expect(mintAudienceProblem(["\u007f"])?.message).toBe("contains control character U+007f at offset 0");
    expect(mintAudienceProblem(["ok\u0090"])?.message).toBe("contains control character U+0090 at offset 2");
  });

  it("signs an entry's JWT-SVID whose log entry is large but fits, and refuses as InvalidArgument, naming the size, one whose entry would not", async () => {
    const logged: TlogEntryInput[] = [];
    const widest = Array.from({ length: MAX_AUDIENCES }, () => "\\".repeat(MAX_AUDIENCE_BYTES));
    await issuer(logged).entryJwtSvid(AGENT, entryWith(20), widest);
    expect(logged).toHaveLength(1);
    expect((logged[0] as TlogEntryInput).entry.length).toBeGreaterThan(55_000);
    // Selectors are not bounded in number: with 30 of the longest, the entry passes 64 KiB.
    await expect(issuer(logged).entryJwtSvid(AGENT, entryWith(30), widest)).rejects.toMatchObject({
      code: "ERR_INVALID_ARGUMENT",
      message: expect.stringMatching(/^issuance: the credential cannot be logged, so it is not issued: tlog entry: an entry has at most 65535 bytes, this one \d+$/),
    });
    expect(logged).toHaveLength(1);
  });
});
