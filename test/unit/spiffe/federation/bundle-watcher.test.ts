import * as https from "node:https";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { serializeSpiffeBundle, toX509Bundle, type SpiffeBundle } from "../../../../spiffe/bundle/spiffe-bundle.js";
import { X509Bundle } from "../../../../spiffe/bundle/x509-bundle.js";
import { isSigilError, type SigilError } from "../../../../spiffe/errors.js";
import { fetchBundle, type EndpointProfile, type FetchedBundle } from "../../../../spiffe/federation/bundle-endpoint-client.js";
import { BundleWatcher, refreshDelayMs, type BundleWatcherOptions, type WatcherTimers } from "../../../../spiffe/federation/bundle-watcher.js";
import { parseSpiffeId, parseTrustDomain } from "../../../../spiffe/id.js";
import { encodePemCertificates, encodePemPrivateKey } from "../../../../spiffe/pem.js";
import { makeLeaf, makeRoot, type TestCa } from "../../../fixtures/x509/pki.js";

const NOT_BEFORE = new Date(Date.now() - 3600_000);
const NOT_AFTER = new Date(Date.now() + 86400_000);
const TD = parseTrustDomain("b.test");
const ENDPOINT_ID = parseSpiffeId("spiffe://b.test/spire/server");
const root1 = makeRoot("b.test", { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
const root2 = makeRoot("b.test", { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });

function doc(seq: bigint | undefined, roots: TestCa[] = [root1], hint: number | undefined = 300): string {
  const b: SpiffeBundle = {
    trustDomain: TD,
    x509Authorities: roots.map((r) => r.rootDer),
    jwtAuthorities: new Map(),
    ...(seq === undefined ? {} : { sequenceNumber: seq }),
    ...(hint === undefined ? {} : { refreshHintSeconds: hint }),
  };
  return serializeSpiffeBundle(b);
}

function svid(ca: TestCa): { key: string; cert: string } {
  const leaf = makeLeaf(ca, ENDPOINT_ID.toString(), { notBefore: NOT_BEFORE, notAfter: NOT_AFTER });
  return { key: encodePemPrivateKey(leaf.key.pkcs8), cert: encodePemCertificates(leaf.chain) };
}

/** An https_spiffe endpoint answering with the next queued response each time. */
interface Endpoint {
  readonly url: string;
  readonly requests: string[];
  respond: (path: string) => { status: number; body: string; location?: string };
  readonly server: https.Server;
}
const servers: https.Server[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});
async function endpoint(tlsMaterial = svid(root1)): Promise<Endpoint> {
  const e = { url: "", requests: [] as string[], respond: (_p: string) => ({ status: 200, body: doc(1n) }) as { status: number; body: string; location?: string } };
  const server = https.createServer(tlsMaterial, (req, res) => {
    e.requests.push(req.url ?? "");
    const r = e.respond(req.url ?? "");
    res.writeHead(r.status, { "content-type": "application/json", ...(r.location === undefined ? {} : { location: r.location }) });
    res.end(r.body);
  });
  server.on("tlsClientError", () => undefined);
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return Object.assign(e, { url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`, server });
}

/** Timers that only record what was scheduled; the test fires them. */
class ManualTimers implements WatcherTimers {
  readonly scheduled: number[] = [];
  #pending: (() => void) | undefined;
  setTimeout(fn: () => void, ms: number): unknown {
    this.scheduled.push(ms);
    this.#pending = fn;
    return fn;
  }
  clearTimeout(h: unknown): void {
    if (this.#pending === h) this.#pending = undefined;
  }
  fire(): void {
    const fn = this.#pending;
    this.#pending = undefined;
    if (fn === undefined) throw new Error("nothing scheduled");
    fn();
  }
}

interface Run {
  readonly watcher: BundleWatcher;
  readonly timers: ManualTimers;
  readonly accepted: FetchedBundle[];
  readonly errors: SigilError[];
  /** Fires the scheduled poll and waits for it to end. */
  poll(): Promise<void>;
}

function watch(url: string, profile: BundleWatcherOptions["profile"], more: Partial<BundleWatcherOptions> = {}): Run {
  const timers = new ManualTimers();
  const accepted: FetchedBundle[] = [];
  const errors: SigilError[] = [];
  const watcher = new BundleWatcher({
    url,
    trustDomain: TD,
    profile,
    timers,
    onBundle: (f) => {
      accepted.push(f);
    },
    onError: (e) => errors.push(e),
    ...more,
  });
  return {
    watcher,
    timers,
    accepted,
    errors,
    poll: async () => {
      timers.fire();
      await watcher.refreshNow().catch(() => undefined); // joins the poll the timer started
    },
  };
}

const spiffe = (bundle: X509Bundle): EndpointProfile => ({ kind: "https_spiffe", endpointSpiffeId: ENDPOINT_ID, bundle });
const operatorBundle = new X509Bundle(TD, [root1.rootDer]);

describe("BundleWatcher", () => {
  it("FED-4: a lower spiffe_sequence is refused and the last good bundle kept; equal and higher are taken", async () => {
    const ep = await endpoint();
    const answers = [doc(5n), doc(3n), doc(5n), doc(6n)];
    ep.respond = () => ({ status: 200, body: answers.shift() as string });
    const run = watch(`${ep.url}/bundle`, spiffe(operatorBundle));
    run.watcher.start();
    for (let i = 0; i < 4; i++) await run.poll();
    await run.watcher.stop();
    expect(run.accepted.map((f) => f.bundle.sequenceNumber)).toEqual([5n, 5n, 6n]);
    expect(run.errors).toHaveLength(1);
    expect(isSigilError(run.errors[0], "ERR_BUNDLE_INVALID")).toBe(true);
    expect(run.errors[0]?.message).toMatch(/spiffe_sequence 3 is lower than the last accepted 5; kept the last bundle/);
  });

  it("FED-4: initialSequence (a bundle already held) refuses an older one", async () => {
    const ep = await endpoint();
    ep.respond = () => ({ status: 200, body: doc(2n) });
    const run = watch(`${ep.url}/bundle`, spiffe(operatorBundle), { initialSequence: 4n });
    await expect(run.watcher.refreshNow()).rejects.toThrow(/spiffe_sequence 2 is lower than the last accepted 4/);
    expect(run.accepted).toEqual([]);
  });

  it("FED-3: polls at the bundle's refresh hint, clamped; the default without a hint", async () => {
    const ep = await endpoint();
    const answers = [doc(1n, [root1], 120), doc(2n, [root1], 1), doc(3n, [root1], 36_000), doc(4n, [root1], undefined)];
    ep.respond = () => ({ status: 200, body: answers.shift() as string });
    const run = watch(`${ep.url}/bundle`, spiffe(operatorBundle), { minRefreshMs: 30_000, maxRefreshMs: 3_600_000, defaultRefreshMs: 300_000 });
    run.watcher.start();
    for (let i = 0; i < 4; i++) await run.poll();
    await run.watcher.stop();
    // The first poll runs at once, then: the hint, clamped up to min, clamped down to max, the default.
    expect(run.timers.scheduled).toEqual([0, 120_000, 30_000, 3_600_000, 300_000]);
    expect(run.errors).toEqual([]);
  });

  it("FED-25: a failed poll is retried at the same interval, not sooner", async () => {
    const ep = await endpoint();
    let status = 200;
    ep.respond = () => ({ status, body: doc(1n, [root1], 120) });
    const run = watch(`${ep.url}/bundle`, spiffe(operatorBundle));
    run.watcher.start();
    await run.poll();
    status = 503;
    await run.poll();
    await run.poll();
    await run.watcher.stop();
    expect(run.timers.scheduled).toEqual([0, 120_000, 120_000, 120_000]);
    expect(run.errors.map((e) => e.code)).toEqual(["ERR_UNAVAILABLE", "ERR_UNAVAILABLE"]);
    expect(run.errors[0]?.message).toMatch(/HTTP status 503/);
    expect(ep.requests).toHaveLength(3);
  });

  it("FED-19: every poll starts at the configured URL, not where the last one was redirected", async () => {
    const ep = await endpoint();
    ep.respond = (path) => (path === "/start" ? { status: 302, body: "", location: "/moved" } : { status: 200, body: doc(1n) });
    const run = watch(`${ep.url}/start`, spiffe(operatorBundle));
    await run.watcher.refreshNow();
    await run.watcher.refreshNow();
    expect(ep.requests).toEqual(["/start", "/moved", "/start", "/moved"]);
    expect(run.accepted[1]?.finalUrl).toBe(`${ep.url}/moved`);
  });

  it("FED-23: the first connection uses the operator's bundle, later ones the fetched bundle, so a root rotation is followed", async () => {
    const ep = await endpoint(svid(root1));
    let held = operatorBundle;
    const profiles: X509Bundle[] = [];
    const run = watch(`${ep.url}/bundle`, () => {
      profiles.push(held);
      return spiffe(held);
    }, {
      onBundle: (f) => {
        held = toX509Bundle(f.bundle);
      },
    });
    // Publish the new root before using it (FED-1).
    ep.respond = () => ({ status: 200, body: doc(1n, [root1, root2]) });
    await run.watcher.refreshNow();
    expect(profiles[0]).toBe(operatorBundle);
    // The endpoint now serves with an SVID from the new root, and retires the old one.
    ep.server.setSecureContext(svid(root2));
    ep.respond = () => ({ status: 200, body: doc(2n, [root2]) });
    // The operator's bundle alone would no longer authenticate the endpoint…
    await expect(fetchBundle({ url: `${ep.url}/bundle`, trustDomain: TD, profile: spiffe(operatorBundle) })).rejects.toThrow(/TLS: x509svid/);
    // …the watcher, using what it fetched, still does.
    const f = await run.watcher.refreshNow();
    expect(f.bundle.sequenceNumber).toBe(2n);
    expect(profiles[1]?.authorityDers).toHaveLength(2);
    expect(held.authorityDers.map((d) => Buffer.from(d).toString("base64"))).toEqual([Buffer.from(root2.rootDer).toString("base64")]);
  });

  it("an onBundle failure does not advance the accepted sequence", async () => {
    const ep = await endpoint();
    const answers = [doc(5n), doc(4n)];
    ep.respond = () => ({ status: 200, body: answers.shift() as string });
    let fail = true;
    const run = watch(`${ep.url}/bundle`, spiffe(operatorBundle), {
      onBundle: () => {
        if (fail) throw new Error("store is down");
      },
    });
    await expect(run.watcher.refreshNow()).rejects.toThrow(/store is down/);
    fail = false;
    await expect(run.watcher.refreshNow()).resolves.toMatchObject({ bundle: { sequenceNumber: 4n } });
  });

  it("stop() aborts a poll in progress and cancels the schedule", async () => {
    const ep = await endpoint();
    ep.server.removeAllListeners("request");
    ep.server.on("request", () => undefined); // never answers
    const run = watch(`${ep.url}/bundle`, spiffe(operatorBundle));
    run.watcher.start();
    run.timers.fire();
    const pending = run.watcher.refreshNow();
    await new Promise((r) => setTimeout(r, 50));
    await run.watcher.stop();
    await expect(pending).rejects.toThrow(/stopped|aborted/);
    expect(run.errors).toEqual([]);
    await expect(run.watcher.refreshNow()).rejects.toThrow(/bundle watcher: stopped/);
    ep.server.closeAllConnections();
  });

  it("refuses bad options naming them", () => {
    const base = { url: "https://127.0.0.1/b", trustDomain: TD, profile: spiffe(operatorBundle), onBundle: () => undefined };
    expect(() => new BundleWatcher({ ...base, url: "http://127.0.0.1/b" })).toThrow(/must use https/);
    expect(() => new BundleWatcher({ ...base, minRefreshMs: 10, maxRefreshMs: 5 })).toThrow(/minRefreshMs 10 is above maxRefreshMs 5/);
    expect(() => new BundleWatcher({ ...base, defaultRefreshMs: -1 })).toThrow(/defaultRefreshMs must be a positive integer/);
    expect(() => new BundleWatcher({ ...base, onBundle: undefined as never })).toThrow(/onBundle must be a function/);
  });

  it("refreshDelayMs clamps the hint", () => {
    const b = (hint?: number): SpiffeBundle => ({ trustDomain: TD, x509Authorities: [], jwtAuthorities: new Map(), ...(hint === undefined ? {} : { refreshHintSeconds: hint }) });
    const bounds = { defaultMs: 300_000, minMs: 30_000, maxMs: 3_600_000 };
    expect(refreshDelayMs(b(60), bounds)).toBe(60_000);
    expect(refreshDelayMs(b(0), bounds)).toBe(30_000);
    expect(refreshDelayMs(b(), bounds)).toBe(300_000);
    expect(refreshDelayMs(undefined, bounds)).toBe(300_000);
    expect(refreshDelayMs(b(99_999), bounds)).toBe(3_600_000);
  });
});
