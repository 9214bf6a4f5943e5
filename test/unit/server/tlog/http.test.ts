/**
 * The tiles listener as a tlog-tiles client and a hostile one see it: every
 * resource a client needs with the right caching headers (immutable full
 * tiles, revalidated partials and checkpoint), a whole log verified through
 * it, and malformed, traversing, oversized or non-GET requests refused
 * without touching the log; slow clients cut off; HTTPS with a reloaded
 * certificate. Under a flood: partial resources and the key list read the
 * datastore once per tree size, and one client beyond its token bucket gets
 * 429 without reaching the log.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { request as httpsRequest } from "node:https";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { PUBLIC_HTTP_LIMITS } from "../../../../common/http-limits.js";
import { createLogger } from "../../../../common/log.js";
import type { PublicHttpListener } from "../../../../common/public-http-listener.js";
import { ManualClock } from "../../../../common/clock.js";
import { createMemoryKeyManager } from "../../../../plugins/keymanager/memory/index.js";
import type { Datastore } from "../../../../server/datastore/index.js";
import { transparencyLogSection } from "../../../../server/tlog/config.js";
import { authorityEntry, toTlogInput } from "../../../../server/tlog/entry.js";
import { IMMUTABLE_CACHE_CONTROL, MUTABLE_CACHE_CONTROL, startTlogListener, tlogListenerService } from "../../../../server/tlog/http.js";
import { TlogService } from "../../../../server/tlog/log-service.js";
import { parseVerifierKey } from "../../../../spiffe/tlog/note.js";
import { httpTlogFetch, verifyLog } from "../../../../spiffe/tlog/verify.js";
import { closeTempDatastore, openTempDatastore, type TempDatastore } from "../../../support/datastore.js";
import { memoryTlogView, type MemoryTlogView } from "../../../support/tlog-view.js";
import { createServingPki } from "../../../support/serving-cert.js";
import { requireTool } from "../../../support/tools.js";

const log = createLogger({ level: "error", destination: { write: () => undefined } });
let listener: PublicHttpListener | undefined;
afterEach(async () => {
  await listener?.close();
  listener = undefined;
});

function viewOf(n: number): MemoryTlogView {
  const view = memoryTlogView();
  view.appendAndPublish(Array.from({ length: n }, (_, i) => ({ v: 1, kind: "x509-svid", serial: i.toString(16), spiffeId: `spiffe://example.org/w/${i}` })));
  return view;
}

async function start(view: MemoryTlogView, limits = PUBLIC_HTTP_LIMITS): Promise<PublicHttpListener> {
  listener = await startTlogListener({ host: "127.0.0.1", port: 0, view, log, limits });
  return listener;
}

/** Sends raw bytes and returns the answer up to the end of its headers. */
function raw(port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, "127.0.0.1", () => s.write(request));
    let out = "";
    s.on("data", (d: Buffer) => {
      out += d.toString("latin1");
      if (/\r\n\r\n/.test(out)) s.end();
    });
    s.on("close", () => resolve(out));
    s.on("error", reject);
  });
}

describe("tlog tiles listener", () => {
  it("serves the checkpoint, full and partial tiles and bundles with the caching each allows, and /log-keys", async () => {
    const view = viewOf(300);
    const l = await start(view);
    const cp = await fetch(`${l.url}/checkpoint`);
    expect(cp.status).toBe(200);
    expect(cp.headers.get("content-type")).toBe("text/plain; charset=utf-8");
    expect(cp.headers.get("cache-control")).toBe(MUTABLE_CACHE_CONTROL);
    expect(await cp.text()).toBe(view.latestCheckpoint()?.note);

    for (const p of ["tile/0/000", "tile/entries/000"]) {
      const r = await fetch(`${l.url}/${p}`);
      expect(r.status, p).toBe(200);
      expect(r.headers.get("content-type")).toBe("application/octet-stream");
      expect(r.headers.get("cache-control")).toBe(IMMUTABLE_CACHE_CONTROL);
      expect(Buffer.from(await r.arrayBuffer()).equals(Buffer.from(view.log.files.get(p) as Uint8Array))).toBe(true);
    }
    for (const p of ["tile/0/001.p/44", "tile/entries/001.p/44", "tile/1/000.p/1"]) {
      const r = await fetch(`${l.url}/${p}`);
      expect(r.status, p).toBe(200);
      expect(r.headers.get("cache-control")).toBe(MUTABLE_CACHE_CONTROL);
      expect((await r.arrayBuffer()).byteLength).toBe((view.log.files.get(p) as Uint8Array).length);
    }
    const keys = await fetch(`${l.url}/log-keys`);
    expect(await keys.text()).toBe(`${view.vkey}\n`);

    const head = await fetch(`${l.url}/tile/0/000`, { method: "HEAD" });
    expect(head.status).toBe(200);
    expect(Number(head.headers.get("content-length"))).toBe(256 * 32);
    expect(await head.text()).toBe("");
  });

  it("is enough for a tlog-tiles client: verifyLog over HTTP checks all 300 entries", async () => {
    const view = viewOf(300);
    const l = await start(view);
    const r = await verifyLog({ fetch: httpTlogFetch(l.url), verifiers: [parseVerifierKey(view.vkey)] });
    expect(r.entries).toBe(300);
  });

  it("answers 404 before the first checkpoint, for tiles not published yet and for unknown paths", async () => {
    const view = memoryTlogView();
    const l = await start(view);
    expect((await fetch(`${l.url}/checkpoint`)).status).toBe(404);
    view.appendAndPublish([{ serial: "01" }]);
    expect((await fetch(`${l.url}/checkpoint`)).status).toBe(200);
    for (const p of ["tile/0/000", "tile/0/001.p/3", "tile/entries/x001/000", "", "index.html", "tile"]) {
      expect((await fetch(`${l.url}/${p}`)).status, p).toBe(404);
    }
  });

  it("refuses malformed and traversing tile paths with 400, never reaching the log", async () => {
    const view = viewOf(10);
    const asked: string[] = [];
    const spy = { ...view, resource: (p: string) => (asked.push(p), view.resource(p)) };
    listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: spy, log });
    const bad = ["tile/0/00", "tile/00/000", "tile/0/000.p/256", "tile/0/000.p/0", "tile/0/x000/001", "tile/../checkpoint", "tile/0/%2e%2e", "tile/entries/..%2f..%2fetc", "tile/0/000/", "tile/64/000"];
    for (const p of bad) {
      const answer = await raw(listener.port, `GET /${p} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      expect(answer, p).toMatch(/^HTTP\/1\.1 400 /);
    }
    expect(asked).toEqual([]);
  });

  it("refuses other methods with 405 and Allow, and a huge request target with 414", async () => {
    const l = await start(viewOf(3));
    for (const method of ["POST", "PUT", "DELETE", "OPTIONS"]) {
      const r = await fetch(`${l.url}/checkpoint`, { method, ...(method === "POST" || method === "PUT" ? { body: "x" } : {}) });
      expect(r.status, method).toBe(405);
      expect(r.headers.get("allow")).toBe("GET, HEAD");
    }
    const long = `/tile/0/${"x001/".repeat(100)}000`;
    expect((await fetch(`${l.url}${long}`)).status).toBe(414);
    // Past Node's header size limit, the connection is answered 431 and closed.
    const answer = await raw(l.port, `GET /checkpoint HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`);
    expect(answer).toMatch(/^HTTP\/1\.1 431 /);
  });

  it("a client that sends its headers slowly is cut off after the headers timeout (slowloris)", async () => {
    const l = await start(viewOf(3), { ...PUBLIC_HTTP_LIMITS, headersTimeoutMs: 300, requestTimeoutMs: 400 });
    const socket = connect(l.port, "127.0.0.1");
    socket.on("error", () => undefined);
    let received = "";
    socket.on("data", (d: Buffer) => (received += d.toString()));
    socket.write("GET /checkpoint HTTP/1.1\r\nHost: x\r\n");
    const drip = setInterval(() => socket.write("X"), 50);
    try {
      await new Promise<void>((resolve) => socket.on("close", () => resolve()));
    } finally {
      clearInterval(drip);
      socket.destroy();
    }
    expect(received).toMatch(/^HTTP\/1\.1 408/);
  });

  it("answers 500 without details when the log cannot be read, and keeps serving", async () => {
    const view = viewOf(3);
    let broken = true;
    const flaky = { ...view, resource: (p: string) => (broken ? Promise.reject(new Error("datastore: connection lost")) : view.resource(p)) };
    listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: flaky, log });
    const r = await fetch(`${listener.url}/tile/0/000.p/3`);
    expect(r.status).toBe(500);
    expect(await r.text()).toBe("internal error\n");
    broken = false;
    expect((await fetch(`${listener.url}/tile/0/000.p/3`)).status).toBe(200);
  });

  it.skipIf(!requireTool("openssl", ["version"], "the serving certificate"))("serves HTTPS and picks up a renewed certificate from its files", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sigil-tlog-http-"));
    try {
      const first = createServingPki("tlog one");
      const second = createServingPki("tlog two");
      const certFile = path.join(dir, "cert.pem");
      const keyFile = path.join(dir, "key.pem");
      writeFileSync(certFile, first.certPem);
      writeFileSync(keyFile, first.keyPem);
      listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: viewOf(3), tls: { certFile, keyFile }, tlsReloadIntervalMs: 50, log });
      expect(listener.url.startsWith("https://")).toBe(true);
      const url = `${listener.url}/checkpoint`;
      const get = (ca: string) =>
        new Promise<number>((resolve, reject) => {
          const req = httpsRequest(url, { ca, agent: false }, (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          });
          req.on("error", reject);
          req.end();
        });
      expect(await get(first.caPem)).toBe(200);
      writeFileSync(keyFile, second.keyPem);
      writeFileSync(certFile, second.certPem);
      await vi.waitFor(async () => expect(await get(second.caPem)).toBe(200), { timeout: 10_000, interval: 100 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses to start on a certificate that does not load, naming the files", async () => {
    await expect(startTlogListener({ host: "127.0.0.1", port: 0, view: viewOf(1), tls: { certFile: "/nonexistent/c.pem", keyFile: "/nonexistent/k.pem" }, log })).rejects.toThrow(
      /tlog: cannot load the serving certificate \/nonexistent\/c\.pem and key \/nonexistent\/k\.pem/,
    );
  });
});

describe("tlog tiles listener under an anonymous flood (security review M2)", () => {
  const T0 = new Date("2030-01-01T00:00:00Z");
  let temp: TempDatastore | undefined;
  let service: TlogService | undefined;
  afterEach(async () => {
    await listener?.close();
    listener = undefined;
    await service?.close();
    service = undefined;
    if (temp) await closeTempDatastore(temp.ds, temp.dir);
    temp = undefined;
  });

  /** Appends `n` authority events straight to the store and checkpoints them. */
  async function grow(s: TlogService, ds: Datastore, n: number): Promise<void> {
    const entries = Array.from({ length: n }, (_, i) => toTlogInput(authorityEntry({ event: "prepared", kind: "x509", keyId: `x509-A-${i}`, serverId: "s1", at: T0 })));
    await ds.recordIssuances([], entries);
    await s.checkpoint();
  }

  it("answers repeated partial bundles, partial tiles and /log-keys with at most one datastore read each", async () => {
    temp = await openTempDatastore("tlog-http", T0);
    const ds = temp.ds;
    const reads = { readTlogEntries: 0, listTlogKeys: 0 };
    // The datastore the log service (and so the listener) reads, counting the reads a client can cause.
    const counted = new Proxy(ds, {
      get(target, key) {
        const v: unknown = Reflect.get(target, key, target);
        if (typeof v !== "function") return v;
        return (...args: unknown[]) => {
          if (key === "readTlogEntries" || key === "listTlogKeys") reads[key]++;
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        };
      },
    });
    service = await TlogService.start({ datastore: counted, keyManager: createMemoryKeyManager(), trustDomain: "example.org", serverId: "s1", now: () => T0, schedule: () => () => undefined, checkpointBatch: 100_000 });
    await grow(service, ds, 300);
    // A clock that stands still: the key list is kept for as long as the checkpoint stays.
    const l = (listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: service, log, clock: new ManualClock(T0) }));
    const before = { ...reads };

    const paths = ["tile/entries/001.p/44", "tile/0/001.p/44", "tile/1/000.p/1", "log-keys"];
    const bodies = new Map<string, string>();
    for (let round = 0; round < 3; round++) {
      const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => fetch(`${l.url}/${paths[i % paths.length]}`).then(async (r) => ({ i, status: r.status, body: Buffer.from(await r.arrayBuffer()).toString("base64") }))));
      for (const a of answers) {
        const p = paths[a.i % paths.length] as string;
        expect(a.status, p).toBe(200);
        expect(a.body, p).toBe(bodies.get(p) ?? a.body);
        bodies.set(p, a.body);
      }
    }
    expect(reads.readTlogEntries - before.readTlogEntries).toBe(1);
    expect(reads.listTlogKeys - before.listTlogKeys).toBe(1);
    const expected = await service.resource("tile/entries/001.p/44");
    expect(bodies.get("tile/entries/001.p/44")).toBe(Buffer.from(expected?.body ?? []).toString("base64"));

    // The tree grows: the new partial bundle is read once, then served from memory too.
    await grow(service, ds, 1);
    const grown = { ...reads };
    for (let i = 0; i < 10; i++) expect((await fetch(`${l.url}/tile/entries/001.p/45`)).status).toBe(200);
    expect(reads.readTlogEntries - grown.readTlogEntries).toBe(1);
    // A rotation signs a new checkpoint: the key list is read again and names the new key.
    const vkey = await service.rotateKey();
    expect(await (await fetch(`${l.url}/log-keys`)).text()).toContain(`${vkey}\n`);
  });

  it("answers a flood from one client with 429 and Retry-After, before reading anything, until its bucket refills", async () => {
    const view = viewOf(10);
    let read = 0;
    const spy = { ...view, resource: (p: string) => (read++, view.resource(p)) };
    const clock = new ManualClock(new Date("2030-01-01T00:00:00Z"));
    listener = await startTlogListener({ host: "127.0.0.1", port: 0, view: spy, log, clock, rateLimit: { perSecond: 2, burst: 5 } });
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) statuses.push((await fetch(`${listener.url}/tile/0/000.p/10`)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429, 429]);
    const refused = await fetch(`${listener.url}/checkpoint`);
    expect(refused.status).toBe(429);
    expect(refused.headers.get("retry-after")).toBe("1");
    expect(await refused.text()).toBe("too many requests from 127.0.0.1; retry after 1 s\n");
    expect(read).toBe(1); // the first answer was kept; no refused request reached the log
    clock.advance(1000);
    expect((await fetch(`${listener.url}/checkpoint`)).status).toBe(200);
    expect((await fetch(`${listener.url}/checkpoint`)).status).toBe(200);
    expect((await fetch(`${listener.url}/checkpoint`)).status).toBe(429);
  });

  it("takes its rate limit from transparency_log (default on) and can be turned off", async () => {
    const parsed = transparencyLogSection.parse({ enabled: true, listen_address: "127.0.0.1:0" });
    expect(parsed).toMatchObject({ rate_limit: true, rate_limit_per_second: 100, rate_limit_burst: 1000 });
    expect(() => transparencyLogSection.parse({ rate_limit_per_second: 0 })).toThrow(/rate_limit_per_second/);
    const svc = tlogListenerService({ ...parsed, rate_limit_per_second: 1, rate_limit_burst: 1 }, () => viewOf(3), log);
    await svc?.start();
    try {
      const url = svc?.listener?.url ?? "";
      expect((await fetch(`${url}/checkpoint`)).status).toBe(200);
      expect((await fetch(`${url}/checkpoint`)).status).toBe(429);
    } finally {
      await svc?.stop();
    }
    const off = tlogListenerService({ ...parsed, rate_limit: false, rate_limit_per_second: 1, rate_limit_burst: 1 }, () => viewOf(3), log);
    await off?.start();
    try {
      const url = off?.listener?.url ?? "";
      for (let i = 0; i < 3; i++) expect((await fetch(`${url}/checkpoint`)).status).toBe(200);
    } finally {
      await off?.stop();
    }
  });
});
