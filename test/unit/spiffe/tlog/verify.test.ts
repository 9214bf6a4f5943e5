import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { describe, expect, it } from "vitest";
import { isSigilError } from "../../../../spiffe/errors.js";
import { MemoryTlog } from "../../../../spiffe/tlog/memory-log.js";
import { generateNoteKey, parseVerifierKey } from "../../../../spiffe/tlog/note.js";
import { decodeEntryBundle, encodeEntryBundle } from "../../../../spiffe/tlog/tiles.js";
import { LogVerificationError, MAX_CHECKPOINT_BYTES, MAX_ENTRY_BUNDLE_BYTES, MAX_HASH_TILE_BYTES, httpTlogFetch, verifyLog, type VerifyLogOptions } from "../../../../spiffe/tlog/verify.js";

const ORIGIN = "example.org/sigil/issuance";
const key = generateNoteKey(ORIGIN);
const otherKey = generateNoteKey(ORIGIN);
const verifiers = [parseVerifierKey(key.vkey)];

const entry = (i: number, salt = ""): Buffer => Buffer.from(`{"kind":"x509-svid","serial":"${i}${salt}","spiffe_id":"spiffe://example.org/w/${i % 17}"}`.padEnd(40 + (i % 90), " "));

function buildLog(size: number, alter?: (i: number) => Buffer): MemoryTlog {
  const log = new MemoryTlog(ORIGIN, [key.signer]);
  for (let i = 0; i < size; i++) log.append(alter?.(i) ?? entry(i));
  log.publish();
  return log;
}

async function failure(options: VerifyLogOptions): Promise<{ code: string; message: string; index: number | undefined }> {
  try {
    await verifyLog(options);
  } catch (e) {
    if (!isSigilError(e)) throw e;
    return { code: e.code, message: e.message, index: e instanceof LogVerificationError ? e.index : undefined };
  }
  throw new Error("verifyLog succeeded");
}

/** Rewrites one entry bundle of a served log. */
function editBundle(log: MemoryTlog, path: string, edit: (entries: Uint8Array[]) => Uint8Array[]): void {
  const bytes = log.files.get(path);
  if (!bytes) throw new Error(`no ${path}`);
  // Encoded one by one: a tampered bundle may hold more than the 256 entries encodeEntryBundle allows.
  log.files.set(path, Buffer.concat(edit(decodeEntryBundle(bytes)).map((e) => encodeEntryBundle([e]))));
}

describe("verifyLog", () => {
  it("verifies a log built in memory, calling onEntry for every entry in order", async () => {
    const log = buildLog(1000);
    const seen: number[] = [];
    const progress: number[] = [];
    const result = await verifyLog({
      fetch: log.fetch,
      verifiers,
      onEntry: (i, e) => {
        seen.push(i);
        if (!Buffer.from(e).equals(entry(i))) throw new Error(`entry ${i} bytes differ`);
      },
      onProgress: (p) => progress.push(p.entries),
    });
    expect(result.entries).toBe(1000);
    expect(result.checkpoint.size).toBe(1000);
    expect(Buffer.from(result.checkpoint.rootHash).equals(log.root())).toBe(true);
    expect(seen).toEqual(Array.from({ length: 1000 }, (_, i) => i));
    expect(progress).toEqual([256, 512, 768, 1000]);
    expect(result.bundlesFetched).toBe(4);
    expect(result.entryBytes).toBe(Array.from({ length: 1000 }, (_, i) => entry(i).length).reduce((a, b) => a + b));
    expect(result.checkpointNote).toBe(Buffer.from(log.files.get("checkpoint") as Uint8Array).toString());
  });

  it("verifies an empty log and logs whose size is a tile boundary", async () => {
    for (const n of [0, 1, 255, 256, 257, 65_536]) {
      const r = await verifyLog({ fetch: buildLog(n).fetch, verifiers });
      expect(r.entries).toBe(n);
    }
  });

  it("names the first bad index when an entry is rewritten in the served bundles", async () => {
    const log = buildLog(1000);
    editBundle(log, "tile/entries/001", (es) => es.map((e, j) => (j === 44 ? entry(300, "-rewritten") : e)));
    editBundle(log, "tile/entries/002", (es) => es.map((e, j) => (j === 1 ? entry(513, "-rewritten") : e)));
    const f = await failure({ fetch: log.fetch, verifiers });
    expect(f.index).toBe(300);
    expect(f.code).toBe("ERR_TLOG_INCONSISTENT");
    expect(f.message).toMatch(/^log verify: entry 300: leaf hash does not match tile\/0\/001 \(hash 44\)/);
  });

  it("names the first bad index when an entry is deleted", async () => {
    const log = buildLog(1000);
    editBundle(log, "tile/entries/001", (es) => es.filter((_, j) => j !== 44));
    expect((await failure({ fetch: log.fetch, verifiers })).message).toMatch(/^log verify: entry 300: leaf hash does not match tile\/0\/001/);
    const last = buildLog(1000);
    editBundle(last, "tile/entries/001", (es) => es.slice(0, 255));
    const f = await failure({ fetch: last.fetch, verifiers });
    expect(f.index).toBe(511);
    expect(f.message).toBe("log verify: entry 511: missing: tile/entries/001 holds 255 entries, tile/0/001 has 256 hashes");
  });

  it("names the first bad index when an entry is inserted", async () => {
    const log = buildLog(1000);
    editBundle(log, "tile/entries/001", (es) => [...es.slice(0, 44), entry(9999), ...es.slice(44)]);
    expect((await failure({ fetch: log.fetch, verifiers })).index).toBe(300);
    const end = buildLog(1000);
    editBundle(end, "tile/entries/001", (es) => [...es, entry(9999)]);
    const f = await failure({ fetch: end.fetch, verifiers });
    expect(f.index).toBe(512);
    expect(f.message).toBe("log verify: entry 512: tile/entries/001 holds 1 more entries than the 256 of tile/0/001");
  });

  it("names the first bad index of a truncated bundle", async () => {
    const log = buildLog(600);
    const b = log.files.get("tile/entries/001") as Uint8Array;
    log.files.set("tile/entries/001", b.subarray(0, b.length - 3));
    const f = await failure({ fetch: log.fetch, verifiers });
    expect(f.index).toBe(511);
    expect(f.message).toMatch(/^log verify: entry 511: tile\/entries\/001 is malformed: tlog tiles: entry 255 at byte \d+: its length \d+ runs past the end/);
  });

  it("reports a level-1 tile that disagrees with the entries, naming its first entry", async () => {
    const log = buildLog(1000);
    const t = Buffer.from(log.files.get("tile/1/000.p/3") as Uint8Array);
    t[40] = (t[40] as number) ^ 1;
    log.files.set("tile/1/000.p/3", t);
    const f = await failure({ fetch: log.fetch, verifiers });
    expect(f.index).toBe(256);
    expect(f.message).toBe("log verify: entry 256: tile/1/000.p/3 (hash 1, entries 256 to 511) does not match the hash recomputed from those entries");
  });

  it("reports a log whose entries and tiles were rewritten together under the old checkpoint", async () => {
    const log = buildLog(1000);
    const rewritten = buildLog(1000, (i) => (i === 700 ? entry(700, "-rewritten") : entry(i)));
    for (const [p, b] of rewritten.files) if (p !== "checkpoint") log.files.set(p, b);
    const f = await failure({ fetch: log.fetch, verifiers });
    expect(f.index).toBeUndefined();
    expect(f.message).toMatch(/^log verify: the checkpoint's root hash .* is not the root .* of its 1000 entries, which match the tiles$/);
  });

  it("refuses a checkpoint signed by another key", async () => {
    const log = new MemoryTlog(ORIGIN, [otherKey.signer]);
    for (let i = 0; i < 10; i++) log.append(entry(i));
    log.publish();
    const f = await failure({ fetch: log.fetch, verifiers });
    expect(f.code).toBe("ERR_TLOG_SIGNATURE_INVALID");
    expect(f.message).toMatch(/^signed note: no signature from a trusted key/);
  });

  it("with keyNameIsOrigin, refuses a checkpoint whose origin is not the name of the key that signed it", async () => {
    // A hand-made checkpoint: the trusted key (named example.org/sigil/issuance) vouches for another log's origin.
    const forged = new MemoryTlog("attacker.example/sigil/issuance", [key.signer]);
    for (let i = 0; i < 10; i++) forged.append(entry(i));
    const note = forged.publish();
    expect(note.startsWith("attacker.example/sigil/issuance\n10\n")).toBe(true);
    expect(note).toContain(`\u2014 ${ORIGIN} `);
    // A generic tlog client (the default) does not bind the two.
    expect((await verifyLog({ fetch: forged.fetch, verifiers })).entries).toBe(10);
    const f = await failure({ fetch: forged.fetch, verifiers, keyNameIsOrigin: true });
    expect(f.code).toBe("ERR_TLOG_SIGNATURE_INVALID");
    expect(f.message).toBe(`checkpoint: origin "attacker.example/sigil/issuance" is not the name of the trusted key that signed it ("${ORIGIN}"); a log's key is named after its origin`);
    // Also for the earlier checkpoint given with since.
    const g = await failure({ fetch: buildLog(20).fetch, verifiers, since: note, keyNameIsOrigin: true });
    expect(g.message).toMatch(/^checkpoint: origin "attacker\.example\/sigil\/issuance" is not the name of the trusted key/);
    expect((await verifyLog({ fetch: buildLog(10).fetch, verifiers, keyNameIsOrigin: true })).entries).toBe(10);
  });

  it("accepts a log that extends an earlier checkpoint", async () => {
    const log = new MemoryTlog(ORIGIN, [key.signer]);
    for (let i = 0; i < 500; i++) log.append(entry(i));
    const earlier = log.publish();
    for (let i = 500; i < 1000; i++) log.append(entry(i));
    log.publish();
    const r = await verifyLog({ fetch: log.fetch, verifiers, since: earlier });
    expect(r.extends?.size).toBe(500);
  });

  it("reports a fork: two checkpoints of the same size with different roots", async () => {
    const a = buildLog(1000);
    const b = buildLog(1000, (i) => (i === 10 ? entry(10, "-forked") : entry(i)));
    const f = await failure({ fetch: a.fetch, verifiers, since: b.files.get("checkpoint") as Uint8Array });
    expect(f.code).toBe("ERR_TLOG_INCONSISTENT");
    expect(f.message).toMatch(/^log verify: the log forked: two checkpoints of size 1000 have different roots/);
  });

  it("reports a fork against an earlier, smaller checkpoint of another history", async () => {
    const b = buildLog(500, (i) => (i === 10 ? entry(10, "-forked") : entry(i)));
    const a = buildLog(1000);
    const f = await failure({ fetch: a.fetch, verifiers, since: b.files.get("checkpoint") as Uint8Array });
    expect(f.message).toMatch(/^log verify: the log forked or was rewritten: its first 500 entries have root .*, the earlier checkpoint of that size says /);
    const shrunk = await failure({ fetch: buildLog(400).fetch, verifiers, since: b.files.get("checkpoint") as Uint8Array });
    expect(shrunk.message).toBe("log verify: the log shrank: the earlier checkpoint has 500 entries, the current one 400");
  });

  it("refuses an earlier checkpoint of another origin", async () => {
    const other = new MemoryTlog("other.example/log", [key.signer]);
    other.append(entry(0));
    const since = other.publish();
    const f = await failure({ fetch: buildLog(10).fetch, verifiers, since });
    expect(f.message).toMatch(/^checkpoint: origin "example.org\/sigil\/issuance" is not the expected "other.example\/log"/);
  });

  it("names a missing resource and stops at an onEntry failure", async () => {
    const log = buildLog(600);
    log.files.delete("tile/entries/001");
    const f = await failure({ fetch: log.fetch, verifiers });
    expect(f.index).toBe(256);
    expect(f.message).toBe("log verify: entry 256: cannot fetch tile/entries/001: memory tlog: no resource tile/entries/001");
    await expect(
      verifyLog({
        fetch: buildLog(10).fetch,
        verifiers,
        onEntry: async (i) => {
          if (i === 7) throw new Error("entry 7: certificate does not chain to example.org");
        },
      }),
    ).rejects.toThrow("entry 7: certificate does not chain to example.org");
  });

  it("validates its options", async () => {
    await expect(verifyLog({ fetch: buildLog(1).fetch, verifiers: [] })).rejects.toThrow("log verify: verifiers must name at least one log key");
    await expect(verifyLog({ fetch: buildLog(1).fetch, verifiers, readAhead: -1 })).rejects.toThrow("log verify: readAhead must be an integer from 0 to 256, got -1");
    expect(() => httpTlogFetch("ftp://log.example/")).toThrow("log verify: url must be http or https, got ftp:");
  });

  it("fetches over HTTP with the given fetch function", async () => {
    const log = buildLog(300);
    const urls: string[] = [];
    const fakeFetch = (async (input: string | URL | Request) => {
      const url = String(input);
      urls.push(url);
      const body = log.files.get(url.replace("https://log.example/prefix/", ""));
      return body ? new Response(body) : new Response("nope", { status: 404 });
    }) as typeof globalThis.fetch;
    const r = await verifyLog({ fetch: httpTlogFetch("https://log.example/prefix/", { fetch: fakeFetch }), verifiers });
    expect(r.entries).toBe(300);
    expect(urls[0]).toBe("https://log.example/prefix/checkpoint");
    log.files.delete("tile/0/001.p/44");
    const f = await failure({ fetch: httpTlogFetch("https://log.example/prefix", { fetch: fakeFetch }), verifiers });
    expect(f.message).toBe("log verify: entry 256: cannot fetch tile/0/001.p/44: log verify: GET https://log.example/prefix/tile/0/001.p/44: HTTP 404");
  });

  it("sends a GET again after a connection failure, a bounded number of times", async () => {
    let calls = 0;
    const flaky = (async () => {
      calls++;
      if (calls <= 2) throw new TypeError("fetch failed", { cause: new Error("read ECONNRESET") });
      return new Response("ok");
    }) as typeof globalThis.fetch;
    expect(Buffer.from(await httpTlogFetch("https://log.example/", { fetch: flaky })("checkpoint")).toString()).toBe("ok");
    expect(calls).toBe(3);
    calls = 0;
    await expect(httpTlogFetch("https://log.example/", { fetch: flaky, retries: 1 })("checkpoint")).rejects.toThrow("log verify: GET https://log.example/checkpoint: fetch failed");
    expect(calls).toBe(2);
  });
  it("refuses a redirect instead of following it, without sending the GET again", async () => {
    let hits = 0;
    const server = createServer((req, res) => {
      hits++;
      if (req.url === "/log/checkpoint") res.writeHead(302, { location: "/elsewhere/checkpoint" }).end();
      else res.end("followed");
    });
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      await expect(httpTlogFetch(`http://127.0.0.1:${port}/log/`)("checkpoint")).rejects.toThrow(
        `log verify: GET http://127.0.0.1:${port}/log/checkpoint: HTTP 302: redirects are not followed`,
      );
      expect(hits).toBe(1);
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it("caps each response at what its path can hold: by Content-Length, and while streaming", async () => {
    expect([MAX_CHECKPOINT_BYTES, MAX_HASH_TILE_BYTES, MAX_ENTRY_BUNDLE_BYTES]).toEqual([1024 * 1024, 256 * 32, 256 * (2 + 65535)]);
    const declared = (async () => new Response("x", { headers: { "content-length": String(MAX_HASH_TILE_BYTES + 1) } })) as typeof globalThis.fetch;
    await expect(httpTlogFetch("https://log.example/", { fetch: declared })("tile/0/000")).rejects.toThrow(
      `log verify: GET https://log.example/tile/0/000: the response exceeds ${MAX_HASH_TILE_BYTES} bytes, the most this path can hold`,
    );
    // No Content-Length, an endless body: reading stops just past the cap.
    let pulled = 0;
    const chunk = new Uint8Array(64 * 1024);
    const endless = (async () =>
      new Response(
        new ReadableStream<Uint8Array>({
          pull(c) {
            pulled++;
            c.enqueue(chunk);
          },
        }),
      )) as typeof globalThis.fetch;
    await expect(httpTlogFetch("https://log.example/", { fetch: endless })("checkpoint")).rejects.toThrow(`the response exceeds ${MAX_CHECKPOINT_BYTES} bytes`);
    expect(pulled).toBeLessThan(MAX_CHECKPOINT_BYTES / chunk.byteLength + 4);
    pulled = 0;
    await expect(httpTlogFetch("https://log.example/", { fetch: endless })("tile/entries/000.p/3")).rejects.toThrow(`the response exceeds ${MAX_ENTRY_BUNDLE_BYTES} bytes`);
    expect(pulled).toBeLessThan(MAX_ENTRY_BUNDLE_BYTES / chunk.byteLength + 4);
    // Within the cap, a streamed body is read whole.
    const full = new Uint8Array(MAX_HASH_TILE_BYTES).fill(7);
    const ok = (async () => new Response(new Blob([full]).stream())) as typeof globalThis.fetch;
    expect(Buffer.from(await httpTlogFetch("https://log.example/", { fetch: ok })("tile/0/000")).equals(Buffer.from(full))).toBe(true);
  });
});
