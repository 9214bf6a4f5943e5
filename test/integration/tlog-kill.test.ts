/**
 * The transparency log survives `kill -9` during heavy issuance: a real
 * `sigil-server run` process (SQLite, log on, checkpoints every 200 ms or 100
 * entries) mints X509-SVIDs from eight concurrent admin clients and is killed
 * with SIGKILL. Restarted on the same data, it starts (the tree rebuilt from
 * the stored entries matches the last checkpoint), its next checkpoint is
 * consistent with the last one before the kill, every checkpoint verifies
 * with a recorded log key, and every issuance record — and every SVID a
 * client received — has its log entry.
 */
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { setTimeout as delay } from "node:timers/promises";
import { credentials } from "@grpc/grpc-js";
import Database from "better-sqlite3";
import { afterAll, describe, expect, it } from "vitest";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { SvidAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { buildCsr } from "../../spiffe/csr.js";
import { generateKeyPair } from "../../spiffe/signer.js";
import { openCheckpoint } from "../../spiffe/tlog/checkpoint.js";
import { MemoryTlog } from "../../spiffe/tlog/memory-log.js";
import { generateNoteKey, parseVerifierKey } from "../../spiffe/tlog/note.js";
import { verifyConsistency } from "../../spiffe/tlog/proof.js";
import { decodeLogEntry } from "../../spiffe/tlog/sigil-entry.js";
import { TileReader } from "../../spiffe/tlog/tiles.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import { launchServerProcess, testServerConfigYaml, type ServerProcess } from "./support/server-process.js";

const dir = mkdtempSync(path.join(tmpdir(), "sigil-tlog-kill-"));
const configPath = path.join(dir, "server.yaml");
const dbPath = path.join(dir, "datastore.sqlite3");
const socketPath = path.join(dir, "admin", "api.sock");
let srv: ServerProcess | undefined;

afterAll(async () => {
  await srv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

interface StoredCheckpoint {
  tree_size: number;
  root_hash: Buffer;
  note: string;
}

function latestCheckpoint(): StoredCheckpoint | undefined {
  const db = new Database(dbPath, { readonly: true, fileMustExist: true });
  try {
    return db.prepare("SELECT tree_size, root_hash, note FROM tlog_checkpoints ORDER BY tree_size DESC LIMIT 1").get() as StoredCheckpoint | undefined;
  } finally {
    db.close();
  }
}

async function waitForCheckpoint(atLeast: number): Promise<StoredCheckpoint> {
  for (let tries = 0; tries < 900; tries++) {
    const cp = latestCheckpoint();
    if (cp !== undefined && cp.tree_size >= atLeast) return cp;
    await delay(100);
  }
  throw new Error(`no checkpoint of size ${atLeast} or more within 90 s (latest: ${latestCheckpoint()?.tree_size})`);
}

/** Mints from `workers` concurrent clients until `stop()`; returns the serials acknowledged. */
function mintLoad(workers: number): { acknowledged: Set<string>; stop: () => Promise<void> } {
  const acknowledged = new Set<string>();
  const client = createUnaryClient(SvidAdmin, `unix:${socketPath}`, credentials.createInsecure());
  const csr = buildCsr(generateKeyPair("ec-p256").privateKey);
  let running = true;
  const loops = Array.from({ length: workers }, async (_, w) => {
    for (let i = 0; running; i++) {
      try {
        const r = await client.mintX509SVID({ csr, spiffeId: `spiffe://example.org/load/w${w}/${i % 10}` });
        const leaf = r.svid?.certChain[0];
        if (leaf) acknowledged.add(canonicalSerialHex(new X509Certificate(leaf).serialNumber));
      } catch {
        if (running) await delay(50); // the server was killed under us
      }
    }
  });
  return {
    acknowledged,
    stop: async () => {
      running = false;
      await Promise.all(loops);
      client.close();
    },
  };
}

describe("transparency log under kill -9", () => {
  it("restarts on a consistent tree, extends the last checkpoint, and logs every issued credential", async () => {
    writeFileSync(
      configPath,
      testServerConfigYaml(dir, { serverExtra: "  log_level: info\n", extraYaml: "transparency_log:\n  enabled: true\n  checkpoint_interval: 200ms\n  checkpoint_batch: 100\n" }),
    );
    srv = await launchServerProcess(dir, configPath, socketPath);
    const load = mintLoad(8);
    await waitForCheckpoint(300);
    srv.child.kill("SIGKILL");
    await new Promise<void>((resolve) => (srv?.child.exitCode !== null || srv?.child.signalCode !== null ? resolve() : srv?.child.once("exit", () => resolve())));
    await load.stop();
    const before = latestCheckpoint() as StoredCheckpoint;

    srv = await launchServerProcess(dir, configPath, socketPath);
    // A restart may add no authority event: mint to make the log grow.
    const more = mintLoad(1);
    const grown = await waitForCheckpoint(before.tree_size + 1);
    await more.stop();
    await srv.stop({ keepDir: true });
    srv = undefined;

    const db = new Database(dbPath, { readonly: true });
    try {
      const vkeys = (db.prepare("SELECT vkey FROM tlog_keys").all() as { vkey: string }[]).map((r) => parseVerifierKey(r.vkey));
      const opened = [before, grown].map((c) => openCheckpoint(c.note, vkeys).checkpoint);
      expect(opened.map((c) => c.size)).toEqual([before.tree_size, grown.tree_size]);
      expect(opened.map((c) => c.origin)).toEqual(["example.org/sigil/issuance", "example.org/sigil/issuance"]);

      // Consistency from the last checkpoint before the kill to the first after, over the stored entries.
      const entries = (db.prepare("SELECT idx, entry FROM tlog_entries WHERE idx < ? ORDER BY idx").all(grown.tree_size) as { idx: number; entry: Buffer }[]);
      expect(entries.map((e) => e.idx)).toEqual(Array.from({ length: grown.tree_size }, (_, i) => i));
      const mirror = new MemoryTlog("example.org/sigil/issuance", [generateNoteKey("mirror").signer]);
      for (const e of entries) mirror.append(e.entry);
      mirror.publish();
      expect(mirror.root().equals(grown.root_hash)).toBe(true);
      const proof = await new TileReader(mirror.fetch, grown.tree_size).consistencyProof(before.tree_size);
      verifyConsistency(before.tree_size, grown.tree_size, proof, before.root_hash, grown.root_hash);

      // Every record and every acknowledged SVID has its entry.
      const logged = new Set<string>();
      for (const e of db.prepare("SELECT entry FROM tlog_entries").all() as { entry: Buffer }[]) {
        const d = decodeLogEntry(e.entry);
        // The server's own SVIDs are recorded too, and logged as `server-svid`.
        if ((d.kind === "x509-svid" || d.kind === "server-svid") && d.serial !== undefined) logged.add(d.serial);
      }
      const recorded = (db.prepare("SELECT serial FROM issuances").all() as { serial: string }[]).map((r) => r.serial);
      expect(recorded.length).toBeGreaterThanOrEqual(300);
      expect(recorded.filter((s) => !logged.has(s))).toEqual([]);
      expect([...load.acknowledged].filter((s) => !logged.has(s))).toEqual([]);
      expect(load.acknowledged.size).toBeGreaterThanOrEqual(300);
    } finally {
      db.close();
    }
  }, 180_000);
});
