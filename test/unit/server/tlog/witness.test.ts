/**
 * The witness (C2SP tlog-witness add-checkpoint) against a real SQLite
 * datastore and an in-memory log: every status code of the spec, a fork
 * refused and reported and refused again later, the HTTP route on the tiles
 * listener, and the log side (WitnessClient) getting cosignatures from it,
 * learning the witness's size from a 409 and serving the cosigned checkpoint.
 */
import { randomBytes } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { createLogger } from "../../../../common/log.js";
import { Metrics } from "../../../../common/metrics.js";
import { checkCosignatures, generateCosigner, parseCosignerVerifierKey, type Cosigner } from "../../../../spiffe/tlog/cosignature.js";
import { parseNote, signatureLine } from "../../../../spiffe/tlog/note.js";
import { MemoryTlog } from "../../../../spiffe/tlog/memory-log.js";
import { TileReader } from "../../../../spiffe/tlog/tiles.js";
import type { Datastore, TlogCheckpointRecord } from "../../../../server/datastore/index.js";
import { startTlogListener } from "../../../../server/tlog/http.js";
import { Witness } from "../../../../server/tlog/witness.js";
import { WitnessClient } from "../../../../server/tlog/witness-client.js";
import { closeTempDatastore, openTempDatastore } from "../../../support/datastore.js";
import { memoryTlogView, type MemoryTlogView } from "../../../support/tlog-view.js";

const T0 = new Date("2030-01-01T00:00:00Z");
const ORIGIN = "peer.example/sigil/issuance";

function capture(): { log: ReturnType<typeof createLogger>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = createLogger({ level: "debug", destination: { write: (s: string) => lines.push(JSON.parse(s) as Record<string, unknown>) } });
  return { log, lines };
}

const body = (old: number, proof: readonly Uint8Array[], note: string): Buffer =>
  Buffer.from(`old ${old}\n${proof.map((h) => `${Buffer.from(h).toString("base64")}\n`).join("")}\n${note}`, "utf8");

describe("witness add-checkpoint", () => {
  let ds: Datastore;
  let dir: string;
  let peer: MemoryTlogView;
  let cosigner: Cosigner;
  let witness: Witness;
  let metrics: Metrics;
  let out: ReturnType<typeof capture>;

  beforeEach(async () => {
    ({ ds, dir } = await openTempDatastore("witness", T0));
    peer = memoryTlogView(ORIGIN);
    cosigner = generateCosigner("w.example/sigil/witness");
    metrics = new Metrics();
    out = capture();
    witness = new Witness({ datastore: ds, cosigner, logs: [{ origin: ORIGIN, keys: [peer.vkey] }], now: () => T0, log: out.log, metrics });
  });
  afterEach(() => closeTempDatastore(ds, dir));

  const proof = (m: number, n: number) => new TileReader(peer.log.fetch, n).consistencyProof(m);
  const entries = (from: number, n: number) => Array.from({ length: n }, (_, i) => ({ serial: `s${from + i}` }));

  it("cosigns a first checkpoint, then only consistent extensions from the size it holds", async () => {
    const cp3 = peer.appendAndPublish(entries(0, 3));
    const first = await witness.addCheckpoint(body(0, [], cp3));
    expect(first.status).toBe(200);
    const v = parseCosignerVerifierKey(cosigner.vkey);
    expect(checkCosignatures(`${cp3}${first.body}`, [v]).cosigned[0]?.timestamp).toBe(T0.getTime() / 1000);

    const cp300 = peer.appendAndPublish(entries(3, 297));
    // Stale old size: 409 with the witness's size as text/x.tlog.size.
    const stale = await witness.addCheckpoint(body(0, [], cp300));
    expect([stale.status, stale.contentType, stale.body]).toEqual([409, "text/x.tlog.size", "3\n"]);
    const next = await witness.addCheckpoint(body(3, await proof(3, 300), cp300));
    expect(next.status, next.body).toBe(200);
    expect((await ds.latestWitnessCheckpoint(ORIGIN))?.treeSize).toBe(300);
    // The same checkpoint again is cosigned again (old = size, equal roots).
    expect((await witness.addCheckpoint(body(300, [], cp300))).status).toBe(200);
    // An older checkpoint with the old size it once had: 409, the witness never goes back.
    expect(await witness.addCheckpoint(body(3, [], cp3))).toMatchObject({ status: 409, body: "300\n" });
  });

  it("answers 404, 403 and 400 for unknown logs, foreign signatures and malformed bodies", async () => {
    const other = memoryTlogView("other.example/log");
    const foreign = new MemoryTlog(ORIGIN, [other.signer]);
    foreign.append(Buffer.from("x"));
    const cp1 = peer.appendAndPublish(entries(0, 1));
    expect((await witness.addCheckpoint(body(0, [], other.appendAndPublish([{ a: 1 }])))).status).toBe(404);
    expect((await witness.addCheckpoint(body(0, [], foreign.publish()))).status).toBe(403);
    const bad = async (b: string | Buffer): Promise<string> => {
      const a = await witness.addCheckpoint(Buffer.from(b));
      expect(a.status, a.body).toBe(400);
      return a.body;
    };
    // Without the blank line the checkpoint's lines are read as proof lines.
    expect(await bad(`old 0\n${cp1}`)).toMatch(/^add-checkpoint: consistency proof line 1 is not base64/);
    expect(await bad("old 0\n")).toMatch(/no blank line/);
    expect(await bad(`old 01\n\n${cp1}`)).toMatch(/the first line must be "old <size>"/);
    expect(await bad(`old 5\n\n${cp1}`)).toMatch(/old size 5 is larger than the checkpoint's 1/);
    expect(await bad(`old 0\n${Buffer.alloc(32).toString("base64")}\n\n${cp1}`)).toMatch(/from size 0 must be empty/);
    expect(await bad(`old 0\n${`${Buffer.alloc(32).toString("base64")}\n`.repeat(64)}\n${cp1}`)).toMatch(/64 consistency proof lines, at most 63/);
    expect(await bad(`old 1\n${Buffer.alloc(32).toString("base64")}\n\n${cp1}`)).toMatch(/between equal sizes must be empty/);
    expect(await bad(`old 0\nnot-base64\n\n${cp1}`)).toMatch(/consistency proof line 1/);
    expect(await bad(Buffer.from([0x6f, 0x6c, 0x64, 0x20, 0x30, 0x0a, 0x0a, 0xff]))).toMatch(/not UTF-8/);
    expect(await bad(`old 0\n\nnot a checkpoint\n`)).toMatch(/checkpoint/);
    const counts = await metrics.registry.getSingleMetricAsString("sigil_tlog_witness_requests_total");
    expect(counts).toMatch(/result="malformed"} 10/);
    expect(counts).toMatch(/result="unknown_log"} 1/);
    expect(counts).toMatch(/result="forbidden"} 1/);
  });

  it("refuses a fork (same size, other root) with 409, a bad proof with 422, reports both, and refuses that branch for good", async () => {
    const cp4 = peer.appendAndPublish(entries(0, 4));
    expect((await witness.addCheckpoint(body(0, [], cp4))).status).toBe(200);
    // The same log key signs a second view of the log: another 4th entry.
    const fork = new MemoryTlog(ORIGIN, [peer.signer]);
    for (const e of [...entries(0, 3), { serial: "evil" }]) fork.append(Buffer.from(JSON.stringify(e)));
    const fork4 = fork.publish();
    expect(await witness.addCheckpoint(body(4, [], fork4))).toMatchObject({ status: 409, contentType: "text/x.tlog.size", body: "4\n" });
    // The forked branch grows: its proof from size 4 cannot lead to the root the witness cosigned.
    for (const e of entries(10, 6)) fork.append(Buffer.from(JSON.stringify(e)));
    const fork10 = fork.publish();
    const forkProof = await new TileReader(fork.fetch, 10).consistencyProof(4);
    expect((await witness.addCheckpoint(body(4, forkProof, fork10))).status).toBe(422);
    // A corrupted proof of the honest branch is refused too; the honest branch still advances.
    const cp8 = peer.appendAndPublish(entries(4, 4));
    const good = await proof(4, 8);
    const corrupted = good.map((h, i) => (i === 0 ? Buffer.alloc(32, 1) : h));
    expect((await witness.addCheckpoint(body(4, corrupted, cp8))).status).toBe(422);
    expect((await witness.addCheckpoint(body(4, good, cp8))).status).toBe(200);
    // Later forked checkpoints stay refused, also by a witness started afresh on the same datastore (a restart).
    expect((await witness.addCheckpoint(body(8, await new TileReader(fork.fetch, 10).consistencyProof(8), fork10))).status).toBe(422);
    const restarted = new Witness({ datastore: ds, cosigner, logs: [{ origin: ORIGIN, keys: [peer.vkey] }], now: () => T0 });
    expect(await restarted.addCheckpoint(body(0, [], fork4))).toMatchObject({ status: 409, body: "8\n" });
    expect((await restarted.addCheckpoint(body(8, await new TileReader(fork.fetch, 10).consistencyProof(8), fork10))).status).toBe(422);

    const reported = out.lines.filter((l) => l.msg === "tlog witness: the log shows a view inconsistent with the checkpoint this witness cosigned (a fork); refused");
    expect(reported.length).toBe(4);
    expect(reported[0]).toMatchObject({ origin: ORIGIN, size: 4, cosigned_size: 4, checkpoint: fork4, cosigned_checkpoint: cp4 });
    expect(await metrics.registry.getSingleMetricAsString("sigil_tlog_witness_forks_total")).toMatch(new RegExp(`origin="${ORIGIN}"} 4`));
  });

  it("concurrent submissions of one origin never roll the witness back", async () => {
    const cp2 = peer.appendAndPublish(entries(0, 2));
    expect((await witness.addCheckpoint(body(0, [], cp2))).status).toBe(200);
    const cp5 = peer.appendAndPublish(entries(2, 3));
    const p5 = await proof(2, 5);
    const cp9 = peer.appendAndPublish(entries(5, 4));
    const p9 = await proof(2, 9);
    const answers = await Promise.all([witness.addCheckpoint(body(2, p9, cp9)), witness.addCheckpoint(body(2, p5, cp5))]);
    expect(answers.map((a) => a.status)).toEqual([200, 409]);
    expect((await ds.latestWitnessCheckpoint(ORIGIN))?.treeSize).toBe(9);
  });

  it("cosigns a replay of the stored checkpoint without a write, and refuses checkpoints with more than 16 signature lines", async () => {
    let writes = 0;
    const counted = new Witness({
      datastore: {
        latestWitnessCheckpoint: (o) => ds.latestWitnessCheckpoint(o),
        advanceWitnessCheckpoint: (n, e) => {
          writes++;
          return ds.advanceWitnessCheckpoint(n, e);
        },
      },
      cosigner,
      logs: [{ origin: ORIGIN, keys: [peer.vkey] }],
      now: () => T0,
    });
    const cp3 = peer.appendAndPublish(entries(0, 3));
    expect((await counted.addCheckpoint(body(0, [], cp3))).status).toBe(200);
    expect(writes).toBe(1);
    const v = parseCosignerVerifierKey(cosigner.vkey);
    const line = cp3.slice(cp3.lastIndexOf("\n\n") + 2);
    // Replays (a retry, another server of the log), one with 16 copies of the log's line: cosigned, nothing written.
    for (const note of [cp3, cp3, cp3 + line.repeat(15)]) {
      const a = await counted.addCheckpoint(body(3, [], note));
      expect(a.status).toBe(200);
      expect(checkCosignatures(cp3 + a.body, [v]).cosigned.length).toBe(1);
    }
    expect(writes).toBe(1);
    const many = await counted.addCheckpoint(body(3, [], cp3 + line.repeat(16)));
    expect([many.status, many.body]).toEqual([400, "signed note: the note has 17 signature lines, more than the 16 accepted\n"]);
  });

  it("cosigns when one signature by a trusted key verifies, even if another does not (403 only when none does)", async () => {
    const cp2 = peer.appendAndPublish(entries(0, 2));
    const text = parseNote(cp2).text;
    const bad = signatureLine(peer.signer.name, peer.signer.keyId, randomBytes(64));
    expect((await witness.addCheckpoint(body(0, [], `${text}\n${bad}`))).status).toBe(403);
    const both = `${text}\n${bad}${cp2.slice(cp2.lastIndexOf("\n\n") + 2)}`;
    expect((await witness.addCheckpoint(body(0, [], both))).status).toBe(200);
  });

  it("never dates a larger tree's cosignature before the one it holds (a clock stepped back)", async () => {
    const cp2 = peer.appendAndPublish(entries(0, 2));
    expect((await witness.addCheckpoint(body(0, [], cp2))).status).toBe(200);
    const behind = new Witness({ datastore: ds, cosigner, logs: [{ origin: ORIGIN, keys: [peer.vkey] }], now: () => new Date(T0.getTime() - 3_600_000) });
    const cp5 = peer.appendAndPublish(entries(2, 3));
    const a = await behind.addCheckpoint(body(2, await proof(2, 5), cp5));
    expect(a.status).toBe(200);
    const v = parseCosignerVerifierKey(cosigner.vkey);
    expect(checkCosignatures(cp5 + a.body, [v]).cosigned[0]?.timestamp).toBe(T0.getTime() / 1000);
    expect((await ds.latestWitnessCheckpoint(ORIGIN))?.updatedAt.getTime()).toBe(T0.getTime());
  });

  it("refuses a witnessed log with a key listed twice or an origin longer than 255 characters", () => {
    const make = (origin: string, keys: string[]) => () => new Witness({ datastore: ds, cosigner, logs: [{ origin, keys }], now: () => T0 });
    expect(make(ORIGIN, [peer.vkey, peer.vkey])).toThrow(/tlog witness: keys 1 and 2 of log peer\.example\/sigil\/issuance are both peer\.example\/sigil\/issuance\+[0-9a-f]{8}/);
    expect(make("o".repeat(256), [peer.vkey])).toThrow(/1 to 255 characters, got 256/);
  });

  it("limits add-checkpoint with a bucket of its own on the tiles listener", async () => {
    const clock = new ManualClock(T0);
    const listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: peer, witness, log: out.log, clock, rateLimit: { perSecond: 100, burst: 100 }, witnessRateLimit: { perSecond: 1, burst: 2 } });
    try {
      const cp = peer.appendAndPublish(entries(0, 2));
      const statuses: number[] = [];
      for (let i = 0; i < 3; i++) statuses.push((await fetch(`${listener.url}/add-checkpoint`, { method: "POST", body: body(0, [], cp) })).status);
      expect(statuses).toEqual([200, 409, 429]);
      // Reading the log is not held back by it.
      expect((await fetch(`${listener.url}/checkpoint`)).status).toBe(200);
      clock.advance(1000);
      expect((await fetch(`${listener.url}/add-checkpoint`, { method: "POST", body: body(2, [], cp) })).status).toBe(200);
    } finally {
      await listener.close();
    }
  });

  it("is served as POST /add-checkpoint on the tiles listener", async () => {
    const listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: peer, witness, log: out.log });
    try {
      const cp = peer.appendAndPublish(entries(0, 2));
      const ok = await fetch(`${listener.url}/add-checkpoint`, { method: "POST", body: body(0, [], cp) });
      expect(ok.status).toBe(200);
      expect(await ok.text()).toMatch(/^— w\.example\/sigil\/witness [A-Za-z0-9+/=]+\n$/);
      const conflict = await fetch(`${listener.url}/add-checkpoint`, { method: "POST", body: body(0, [], cp) });
      expect([conflict.status, conflict.headers.get("content-type"), await conflict.text()]).toEqual([409, "text/x.tlog.size", "2\n"]);
      const get = await fetch(`${listener.url}/add-checkpoint`);
      expect([get.status, get.headers.get("allow")]).toEqual([405, "POST"]);
      const big = await fetch(`${listener.url}/add-checkpoint`, { method: "POST", body: Buffer.alloc(70_000, 0x41) });
      expect(big.status).toBe(413);
      expect((await fetch(`${listener.url}/checkpoint`)).status).toBe(200);
    } finally {
      await listener.close();
    }
  });

  it("the log side learns the witness's size from a 409, sends a proof, and serves and stores the cosigned checkpoint", async () => {
    // The witness already holds size 3 of this log (say, from before a restart of the log).
    const cp3 = peer.appendAndPublish(entries(0, 3));
    expect((await witness.addCheckpoint(body(0, [], cp3))).status).toBe(200);
    const stored: TlogCheckpointRecord[] = [];
    const requests: string[] = [];
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async (c) => void stored.push(c) },
      serverId: "s1",
      witnesses: [{ url: "http://witness.test/", key: cosigner.vkey }],
      now: () => T0,
      metrics,
      fetch: (async (url: string, init: RequestInit) => {
        requests.push(`${url} ${String(init.body).split("\n")[0]}`);
        const a = await witness.addCheckpoint(Buffer.from(String(init.body)));
        return new Response(a.body, { status: a.status, headers: { "content-type": a.contentType } });
      }) as typeof fetch,
    });
    try {
      const cp = peer.appendAndPublish(entries(3, 7));
      client.checkpointSigned(peer.latestCheckpoint() as { note: string; size: number; rootHash: Uint8Array });
      await client.close();
      expect(requests).toEqual(["http://witness.test/add-checkpoint old 0", "http://witness.test/add-checkpoint old 3"]);
      const served = client.view(peer).latestCheckpoint()?.note as string;
      expect(served.startsWith(cp)).toBe(true);
      expect(checkCosignatures(served, [parseCosignerVerifierKey(cosigner.vkey)]).cosigned.length).toBe(1);
      expect(parseNote(served).signatures.length).toBe(2);
      expect(stored.map((s) => [s.serverId, s.treeSize, s.note])).toEqual([["s1", 10, served]]);
      expect(await metrics.registry.getSingleMetricAsString("sigil_tlog_witness_quorum_met")).toMatch(/ 1$/m);
    } finally {
      await client.close();
    }
  });

  it("the log side keeps serving the last cosigned checkpoint while a new one waits for the quorum, up to the witness timeout", async () => {
    let now = T0.getTime();
    let gate: (() => void) | undefined;
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async () => undefined },
      serverId: "s1",
      witnesses: [{ url: "http://witness.test", key: cosigner.vkey }],
      timeoutMs: 5000,
      now: () => new Date(now),
      // The second submission waits until the test lets it through.
      fetch: (async (_url: string, init: RequestInit) => {
        if (gate === undefined && String(init.body).includes("\n2\n")) await new Promise<void>((resolve) => (gate = resolve));
        const a = await witness.addCheckpoint(Buffer.from(String(init.body)));
        return new Response(a.body, { status: a.status, headers: { "content-type": a.contentType } });
      }) as typeof fetch,
    });
    const view = client.view(peer);
    const v = parseCosignerVerifierKey(cosigner.vkey);
    try {
      peer.appendAndPublish(entries(0, 1));
      client.checkpointSigned(peer.latestCheckpoint() as { note: string; size: number; rootHash: Uint8Array });
      await vi.waitFor(() => expect(checkCosignatures(view.latestCheckpoint()?.note as string, [v]).cosigned.length).toBe(1));
      const first = view.latestCheckpoint()?.note as string;

      peer.appendAndPublish(entries(1, 1));
      client.checkpointSigned(peer.latestCheckpoint() as { note: string; size: number; rootHash: Uint8Array });
      await vi.waitFor(() => expect(gate).toBeDefined());
      // Size 2 is signed but not cosigned: size 1, cosigned, is still served.
      expect(view.latestCheckpoint()?.size).toBe(1);
      expect(Buffer.from((await view.resource("checkpoint"))?.body ?? []).toString()).toBe(first);
      // Past the witness timeout the newest is served without cosignatures.
      now += 5000;
      expect([view.latestCheckpoint()?.size, view.latestCheckpoint()?.note]).toEqual([2, peer.latestCheckpoint()?.note]);
      now -= 5000;
      (gate as () => void)();
      await vi.waitFor(() => expect(view.latestCheckpoint()?.size).toBe(2));
      expect(checkCosignatures(view.latestCheckpoint()?.note as string, [v]).cosigned.length).toBe(1);
    } finally {
      gate?.();
      await client.close();
    }
  });

  it("the log side backs off from a failing witness and never serves a cosignature that does not verify", async () => {
    const liar = generateCosigner("w.example/sigil/witness");
    const scheduled: number[] = [];
    const client = new WitnessClient({
      view: peer,
      datastore: { putTlogCheckpoint: async () => undefined },
      serverId: "s1",
      witnesses: [{ url: "http://witness.test", key: cosigner.vkey }],
      now: () => T0,
      metrics,
      schedule: (_fn, ms) => {
        scheduled.push(ms);
        return () => undefined;
      },
      log: out.log,
      // Answers with a cosignature by another key of the same name.
      fetch: (async (_url: string, init: RequestInit) => {
        const note = String(init.body).split("\n\n").slice(1).join("\n\n");
        return new Response(liar.cosign(parseNote(note).text, 1), { status: 200 });
      }) as typeof fetch,
    });
    peer.appendAndPublish(entries(0, 2));
    client.checkpointSigned(peer.latestCheckpoint() as { note: string; size: number; rootHash: Uint8Array });
    await vi.waitFor(() => expect(scheduled).toEqual([1000]));
    await client.close();
    expect(client.view(peer).latestCheckpoint()?.note).toBe(peer.latestCheckpoint()?.note);
    expect(out.lines.find((l) => l.msg === "tlog: witness did not cosign the checkpoint")?.err).toMatch(/no cosignature by w\.example\/sigil\/witness\+/);
    expect(await metrics.registry.getSingleMetricAsString("sigil_tlog_witness_submissions_total")).toMatch(/result="failed"} 1/);
  });
});
