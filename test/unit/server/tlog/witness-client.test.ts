/**
 * The log side of witnessing against misbehaving and absent witnesses: an
 * answer padded with junk lines never grows the served or stored note, a
 * long outage while checkpoints keep coming does not freeze /checkpoint, a
 * witness ahead of this server is skipped without backoff, writes of
 * cosignatures finishing together never leave the row with fewer, and a
 * log service restarts on a stored note an earlier version let grow too big.
 */
import { randomBytes } from "node:crypto";
import { describe, expect, it, vi } from "vitest";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { checkCosignatures, generateCosigner, parseCosignerVerifierKey } from "../../../../spiffe/tlog/cosignature.js";
import { openCheckpoint } from "../../../../spiffe/tlog/checkpoint.js";
import { DEFAULT_MAX_SIGNATURES, parseNote, parseVerifierKey, signatureLine } from "../../../../spiffe/tlog/note.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import type { TlogCheckpointRecord } from "../../../../server/datastore/index.js";
import { TlogService } from "../../../../server/tlog/log-service.js";
import { WitnessClient } from "../../../../server/tlog/witness-client.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";
import { memoryTlogView } from "../../../support/tlog-view.js";

const T0 = new Date("2030-01-01T00:00:00Z").getTime();
const ORIGIN = "peer.example/sigil/issuance";

type Cp = { note: string; size: number; rootHash: Uint8Array };

/** The checkpoint text of an add-checkpoint body. */
const textOf = (body: string): string => parseNote(body.slice(body.indexOf("\n\n") + 2)).text;

const entries = (from: number, n: number) => Array.from({ length: n }, (_, i) => ({ serial: `s${from + i}` }));

describe("witness client", () => {
  it("keeps one verified line per witness: junk lines in an answer never reach the served or stored note", async () => {
    const peer = memoryTlogView(ORIGIN);
    const evil = generateCosigner("evil.example");
    const good = generateCosigner("good.example");
    const stored: TlogCheckpointRecord[] = [];
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async (r) => void stored.push(r) },
      serverId: "s1",
      witnesses: [
        { url: "https://evil.test", key: evil.vkey },
        { url: "https://good.test", key: good.vkey },
      ],
      quorum: 1,
      now: () => new Date(T0),
      fetch: (async (url: string, init: RequestInit) => {
        const text = textOf(String(init.body));
        if (url.startsWith("https://evil")) {
          // A valid cosignature, an older valid one, and 98 lines of its key that do not verify.
          let answer = evil.cosign(text, 1_900_000_000) + evil.cosign(text, 1_800_000_000);
          for (let i = 0; i < 98; i++) answer += signatureLine(evil.name, evil.keyId, randomBytes(72));
          return new Response(answer, { status: 200 });
        }
        return new Response(good.cosign(text, 1_900_000_001), { status: 200 });
      }) as typeof fetch,
    });
    try {
      peer.appendAndPublish(entries(0, 5));
      client.checkpointSigned(peer.latestCheckpoint() as Cp);
      await client.close();
      const served = client.view(peer).latestCheckpoint()?.note as string;
      const lines = parseNote(served).signatures;
      // The log's line, then one per witness: the newest valid cosignature of each.
      expect(lines.map((s) => s.name)).toEqual([ORIGIN, "evil.example", "good.example"]);
      const check = checkCosignatures(served, [parseCosignerVerifierKey(evil.vkey), parseCosignerVerifierKey(good.vkey)]);
      expect(check.cosigned.map((c) => c.timestamp)).toEqual([1_900_000_000, 1_900_000_001]);
      expect(stored.at(-1)?.note).toBe(served);
    } finally {
      await client.close();
    }
  });

  it("drops lines of unknown keys from a stored note with more than a note may carry (after a restart)", async () => {
    const peer = memoryTlogView(ORIGIN);
    const w = generateCosigner("w.example");
    peer.appendAndPublish(entries(0, 3));
    const cp = peer.latestCheckpoint() as Cp;
    const text = parseNote(cp.note).text;
    let junk = "";
    for (let i = 0; i < DEFAULT_MAX_SIGNATURES + 5; i++) junk += signatureLine("junk.example", 0x01020304, randomBytes(72));
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async () => undefined },
      serverId: "s1",
      witnesses: [{ url: "https://w.test", key: w.vkey }],
      now: () => new Date(T0),
      // The witness is down: what is served is what was handed over, cleaned.
      fetch: (async () => {
        throw new Error("connection refused");
      }) as typeof fetch,
      schedule: () => () => undefined,
    });
    try {
      client.checkpointSigned({ ...cp, note: cp.note + junk + w.cosign(text, 1_900_000_000) });
      const served = client.served({ ...cp, note: cp.note + junk + w.cosign(text, 1_900_000_000) }).note;
      expect(parseNote(served).signatures.map((s) => s.name)).toEqual([ORIGIN, "w.example"]);
    } finally {
      await client.close();
    }
  });

  it("with every witness down, the newest checkpoint is served once the first one signed after the last quorum is witness_timeout old, however often checkpoints come", async () => {
    const peer = memoryTlogView(ORIGIN);
    const w = generateCosigner("w.example");
    let now = T0;
    let up = true;
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async () => undefined },
      serverId: "s1",
      witnesses: [{ url: "https://w.test", key: w.vkey }],
      timeoutMs: 5000,
      now: () => new Date(now),
      // Backoff retries never fire: each new checkpoint is what triggers a submission.
      schedule: () => () => undefined,
      fetch: (async (_url: string, init: RequestInit) => {
        if (!up) throw new Error("connection refused");
        return new Response(w.cosign(textOf(String(init.body)), Math.floor(now / 1000)), { status: 200 });
      }) as typeof fetch,
    });
    const view = client.view(peer);
    try {
      peer.appendAndPublish(entries(0, 1));
      client.checkpointSigned(peer.latestCheckpoint() as Cp);
      await vi.waitFor(() => expect(checkCosignatures(view.latestCheckpoint()?.note as string, [parseCosignerVerifierKey(w.vkey)]).cosigned.length).toBe(1));
      up = false;
      // A checkpoint a second while the witness is down: each is younger than the timeout when signed.
      const served: number[] = [];
      for (let i = 2; i <= 8; i++) {
        now += 1000;
        peer.appendAndPublish(entries(i - 1, 1));
        client.checkpointSigned(peer.latestCheckpoint() as Cp);
        served.push(view.latestCheckpoint()?.size as number);
      }
      // Held back at size 1 for the 5 s after size 2 was signed (at +1 s), then the newest.
      expect(served).toEqual([1, 1, 1, 1, 1, 7, 8]);
      expect(view.latestCheckpoint()?.note).toBe(peer.latestCheckpoint()?.note);
    } finally {
      await client.close();
    }
  });

  it("skips a witness that has cosigned a larger tree (another server of the log) without backoff", async () => {
    const peer = memoryTlogView(ORIGIN);
    const w = generateCosigner("w.example");
    const scheduled: number[] = [];
    const metrics = new Metrics();
    const lines: Record<string, unknown>[] = [];
    const log = createLogger({ level: "debug", destination: { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) } });
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async () => undefined },
      serverId: "s1",
      witnesses: [{ url: "https://w.test", key: w.vkey }],
      now: () => new Date(T0),
      metrics,
      log,
      schedule: (_fn, ms) => {
        scheduled.push(ms);
        return () => undefined;
      },
      // The witness holds size 100 of this log.
      fetch: (async () => new Response("100\n", { status: 409, headers: { "content-type": "text/x.tlog.size" } })) as typeof fetch,
    });
    try {
      peer.appendAndPublish(entries(0, 3));
      client.checkpointSigned(peer.latestCheckpoint() as Cp);
      await client.close();
      expect(scheduled).toEqual([]);
      expect(lines.filter((l) => l.msg === "tlog: witness did not cosign the checkpoint")).toEqual([]);
      const counts = await metrics.registry.getSingleMetricAsString("sigil_tlog_witness_submissions_total");
      expect(counts).toMatch(/result="ahead"} 1/);
      expect(counts).not.toMatch(/result="failed"/);
    } finally {
      await client.close();
    }
  });

  it("stores cosignatures finishing together in order: the row ends with all of them", async () => {
    const peer = memoryTlogView(ORIGIN);
    const a = generateCosigner("a.example");
    const b = generateCosigner("b.example");
    const rows: string[] = [];
    let firstWrite: (() => void) | undefined;
    const client = new WitnessClient({
      view: peer,
      // The first write is slow: without ordering, the second (with both lines) would land before it.
      datastore: {
        putTlogCheckpoint: async (r) => {
          if (rows.length === 0 && firstWrite === undefined) await new Promise<void>((resolve) => (firstWrite = resolve));
          rows.push(r.note);
        },
      },
      serverId: "s1",
      witnesses: [
        { url: "https://a.test", key: a.vkey },
        { url: "https://b.test", key: b.vkey },
      ],
      now: () => new Date(T0),
      fetch: (async (url: string, init: RequestInit) => {
        const c = url.startsWith("https://a") ? a : b;
        return new Response(c.cosign(textOf(String(init.body)), 1_900_000_000), { status: 200 });
      }) as typeof fetch,
    });
    try {
      peer.appendAndPublish(entries(0, 2));
      client.checkpointSigned(peer.latestCheckpoint() as Cp);
      await vi.waitFor(() => expect(firstWrite).toBeDefined());
      // b's answer arrives while a's write waits.
      await vi.waitFor(() => expect(checkCosignatures(client.served(peer.latestCheckpoint() as Cp).note, [parseCosignerVerifierKey(a.vkey), parseCosignerVerifierKey(b.vkey)]).cosigned.length).toBe(2));
      (firstWrite as () => void)();
      await client.close();
      const last = rows.at(-1) as string;
      expect(checkCosignatures(last, [parseCosignerVerifierKey(a.vkey), parseCosignerVerifierKey(b.vkey)]).cosigned.length).toBe(2);
    } finally {
      firstWrite?.();
      await client.close();
    }
  });

  it("refuses two witnesses of one public key", () => {
    const w = generateCosigner("w.example");
    const [name, id] = w.vkey.split("+") as [string, string];
    const upper = `${name}+${id.toUpperCase()}${w.vkey.slice(name.length + 1 + id.length)}`;
    const make = () =>
      new WitnessClient({
        view: memoryTlogView(ORIGIN),
        datastore: { putTlogCheckpoint: async () => undefined },
        serverId: "s1",
        witnesses: [
          { url: "https://a.test", key: w.vkey },
          { url: "https://b.test", key: upper },
        ],
        now: () => new Date(T0),
      });
    expect(make).toThrow(/witness key w\.example\+[0-9a-f]{8} is listed twice/);
  });

  it("a log service starts with a stored checkpoint carrying more signature lines than a note may, keeping its own", async () => {
    const temp = await openTempDatastore("witness-restart", new Date(T0));
    const km = createMemoryKeyManager();
    const deps = { datastore: temp.ds, keyManager: km, trustDomain: "example.org", serverId: "s1", now: () => temp.clock.now(), schedule: () => () => undefined };
    try {
      let s = await TlogService.start(deps);
      const cp = s.latestCheckpoint() as Cp;
      let junk = "";
      for (let i = 0; i < DEFAULT_MAX_SIGNATURES + 20; i++) junk += signatureLine("evil.example", 0x01020304, randomBytes(72));
      // What an earlier version could store after a witness padded its answer.
      await temp.ds.putTlogCheckpoint({ serverId: "s1", treeSize: cp.size, rootHash: cp.rootHash, note: cp.note + junk, createdAt: temp.clock.now() });
      await s.close();
      s = await TlogService.start(deps);
      try {
        const note = s.latestCheckpoint()?.note as string;
        expect(note).toBe(cp.note);
        expect(openCheckpoint(note, (await s.verifierKeys()).map((k) => parseVerifierKey(k))).checkpoint.size).toBe(cp.size);
      } finally {
        await s.close();
      }
    } finally {
      await closeTempDatastore(temp.ds, temp.dir);
    }
  });
});
