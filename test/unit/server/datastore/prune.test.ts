/**
 * The server's periodic pruning: expired join tokens go, and issuance records
 * go only once their credential has been expired for the retention period.
 */
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import type { ManualClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import type { Datastore, IssuanceInput } from "../../../../server/datastore/index.js";
import { pruneExpired } from "../../../../server/datastore/prune.js";
import { isSigilError } from "../../../../spiffe/errors.js";
import { datastoreEngines, closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const HOUR = 3_600_000;
const lines: string[] = [];
const log = createLogger({ level: "debug", destination: { write: (l) => void lines.push(l) } });

const engines = await datastoreEngines();

let dir: string;
let clock: ManualClock;
let ds: Datastore;
describe.each(engines)("datastore on %s", (engine) => {
  beforeEach(async () => {
    ({ dir, clock, ds } = await openTempDatastore("prune", T0, engine));
  });
  afterEach(() => closeTempDatastore(ds, dir));

  const rec = (serial: string, notAfter: Date): IssuanceInput => ({
    serial,
    kind: "x509-svid",
    spiffeId: "spiffe://example.org/web",
    entryId: "e1",
    agentId: null,
    caKeyId: "k",
    notBefore: new Date(notAfter.getTime() - HOUR),
    notAfter,
    issuedAt: new Date(notAfter.getTime() - HOUR),
    selectors: ["unix:uid:1"],
    requestedBy: "admin:local",
  });

  describe("pruneExpired", () => {
    it("keeps issuance records for the retention period after expiry, and drops expired join tokens", async () => {
      await ds.recordIssuances([rec("a1", new Date(T0.getTime() + HOUR)), rec("a2", new Date(T0.getTime() + 5 * HOUR))]);
      await ds.createJoinToken({ token: "tok-1", expiresAt: new Date(T0.getTime() + HOUR) });
      const serials = async () => (await ds.listIssuances()).items.map((i) => i.serial).sort();

      clock.set(new Date(T0.getTime() + 2 * HOUR)); // a1 expired an hour ago
      await pruneExpired(ds, clock.now(), 24 * HOUR, log);
      expect(await serials()).toEqual(["a1", "a2"]);
      // Pruned: no longer reported as expired, simply gone.
      await expect(ds.consumeJoinToken("tok-1", clock.now())).rejects.toSatisfy((e: unknown) => isSigilError(e, "ERR_NOT_FOUND"));

      clock.set(new Date(T0.getTime() + 26 * HOUR)); // a1 expired 25 h ago, a2 21 h ago
      await pruneExpired(ds, clock.now(), 24 * HOUR, log);
      expect(await serials()).toEqual(["a2"]);
      // Retention 0: records go as soon as they expire.
      await pruneExpired(ds, clock.now(), 0, log);
      expect(await serials()).toEqual([]);
    });
  });
});
