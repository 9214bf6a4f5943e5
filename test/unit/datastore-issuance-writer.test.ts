import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { systemClock } from "../../common/clock.js";
import { isSigilError } from "../../spiffe/errors.js";
import { createSqliteDatastore } from "../../server/datastore/index.js";

const rec = (serial: string, spiffeId = "spiffe://example.org/w") => ({
  serial, kind: "x509-svid" as const, spiffeId, entryId: "e1", agentId: null, caKeyId: "k",
  notBefore: new Date(), notAfter: new Date(Date.now() + 60_000), issuedAt: new Date(), selectors: ["unix:uid:1"], requestedBy: "admin:local",
});

describe("issuance log written from a worker thread", () => {
  it("commits a batch before resolving, readable from the main connection", async () => {
    const ds = await createSqliteDatastore({ path: path.join(mkdtempSync(path.join(tmpdir(), "sigil-iw-")), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    await ds.recordIssuances([rec("a1"), rec("a2")]);
    expect((await ds.listIssuances({})).items.map((i) => i.serial).sort()).toEqual(["a1", "a2"]);
    await ds.close();
  });

  it("refuses a whole batch with one invalid record, naming it, and writes nothing", async () => {
    const ds = await createSqliteDatastore({ path: path.join(mkdtempSync(path.join(tmpdir(), "sigil-iw-")), "d.sqlite3"), clock: systemClock, issuanceWorker: true });
    let caught: unknown;
    try { await ds.recordIssuances([rec("b1"), rec("b2", "not-a-spiffe-id")]); } catch (e) { caught = e; }
    expect(isSigilError(caught, "ERR_INVALID_ARGUMENT")).toBe(true);
    expect((caught as Error).message).toMatch(/issuance\[1\]/);
    expect((await ds.listIssuances({})).items).toEqual([]);
    await ds.close();
  });
});
