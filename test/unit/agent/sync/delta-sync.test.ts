/**
 * The sync loop asks for deltas and merges them into the entry set it holds:
 * added and changed entries replace, removed IDs go, an empty bundle list
 * keeps the bundles; a full answer replaces everything. Also the change
 * stream's backoff, and server address parsing and DNS expansion.
 */
import { describe, expect, it, vi } from "vitest";
import { AgentCache } from "../../../../agent/cache/agent-cache.js";
import { watchBackoffMs, WATCH_MAX_BACKOFF_MS, WATCH_MIN_BACKOFF_MS, ChangeWatcher } from "../../../../agent/sync/change-watch.js";
import { parseHostPort, resolveServerTargets } from "../../../../agent/sync/server-addresses.js";
import type { ChangeWatch, ServerClient, SyncedEntry, SyncResult } from "../../../../agent/sync/server-client.js";
import { SyncLoop } from "../../../../agent/sync/sync-loop.js";
import { ManualClock } from "../../../../common/clock.js";
import { makeSelector } from "../../../../common/selector.js";
import { SigilError } from "../../../../spiffe/errors.js";
import { parseTrustDomain } from "../../../../spiffe/id.js";
import { generateSigner } from "../../../../spiffe/signer.js";
import { createRootCa } from "../../../../spiffe/x509/ca.js";

const td = parseTrustDomain("example.org");
const clock = new ManualClock(new Date("2030-01-01T00:00:00Z"));
const caDer = createRootCa({ trustDomain: td, notBefore: new Date("2029-01-01"), notAfter: new Date("2031-01-01"), signer: generateSigner("ec-p256") });
const bundle = { trustDomain: td, x509Authorities: [caDer], jwtAuthorities: new Map() };

function entry(id: string, revision: number): SyncedEntry {
  return {
    id,
    spiffeId: `spiffe://example.org/${id}`,
    parentId: "spiffe://example.org/spire/agent/a",
    selectors: [makeSelector("unix", `uid:${id.length}`)],
    federatesWith: [],
    hint: "",
    createdAt: new Date(0),
    revision,
    jwtSvidTtlSeconds: 0,
    x509SvidTtlSeconds: 0,
    dnsNames: [],
    expiresAt: undefined,
  };
}

/** Answers scripted sync results; SVID requests are refused (not what is tested). */
function scripted(results: SyncResult[]): ServerClient & { asked: [string, boolean | undefined][] } {
  const asked: [string, boolean | undefined][] = [];
  const unused = (): never => {
    throw new Error("not used");
  };
  return {
    asked,
    attest: unused,
    renew: unused,
    newJwtSvid: unused,
    setIdentity: () => undefined,
    setTrustBundle: () => undefined,
    close: () => undefined,
    async sync(knownRevision, acceptDelta) {
      asked.push([knownRevision, acceptDelta]);
      const r = results.shift();
      if (!r) throw new Error("no more results");
      return r;
    },
    async batchNewX509Svid(params) {
      return params.map(() => ({ ok: false as const, code: 7, message: "not signing here" }));
    },
  };
}

describe("delta sync in the sync loop", () => {
  it("asks with its revision, merges deltas, keeps bundles a delta leaves out, and replaces on a full answer", async () => {
    const client = scripted([
      { notModified: false, revision: "r1", entries: [entry("a", 1), entry("b", 1)], bundles: [bundle] },
      { notModified: false, revision: "r2", entries: [entry("b", 2), entry("c", 1)], bundles: [], delta: { removedEntryIds: ["a"] } },
      { notModified: true, revision: "r2", entries: [], bundles: [] },
      { notModified: false, revision: "r3", entries: [entry("d", 1)], bundles: [bundle] },
    ]);
    const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: () => Promise.reject(new Error("not used")) });
    const loop = new SyncLoop({ client, cache, clock, intervalMs: 5000 });
    const ids = (): string[] => [...cache.entries()].map((e) => `${e.id}@${e.revision}`).sort();

    await loop.syncNow();
    expect(ids()).toEqual(["a@1", "b@1"]);
    await loop.syncNow();
    expect(ids()).toEqual(["b@2", "c@1"]);
    expect(cache.ready()).toBe(true);
    await loop.syncNow();
    expect(ids()).toEqual(["b@2", "c@1"]);
    await loop.syncNow();
    expect(ids()).toEqual(["d@1"]);
    expect(client.asked).toEqual([
      ["", true],
      ["r1", true],
      ["r2", true],
      ["r2", true],
    ]);
  });

  it("an answer it could not apply is not the base of the next delta (a server remembering the older revision answers relative to it)", async () => {
    const client = scripted([
      { notModified: false, revision: "r1", entries: [entry("a", 1)], bundles: [bundle] },
      // Not applied: its bundle is refused.
      { notModified: false, revision: "r2", entries: [entry("b", 1)], bundles: [bundle], delta: { removedEntryIds: [] } },
      // Another server, remembering r1 for this agent: b was added and deleted since, so it is in no list.
      { notModified: false, revision: "r3", entries: [entry("c", 1)], bundles: [], delta: { removedEntryIds: [] } },
    ]);
    let refuse = false;
    client.setTrustBundle = () => {
      if (refuse) throw new SigilError("ERR_BUNDLE_INVALID", "sync: refused for the test");
    };
    const cache = new AgentCache({ trustDomain: td, clock, mintJwtSvid: () => Promise.reject(new Error("not used")) });
    const loop = new SyncLoop({ client, cache, clock, intervalMs: 5000 });
    await loop.syncNow();
    refuse = true;
    await loop.syncNow();
    refuse = false;
    await loop.syncNow();
    expect(client.asked.map(([r]) => r)).toEqual(["", "r1", "r1"]);
    expect([...cache.entries()].map((e) => e.id).sort()).toEqual(["a", "c"]);
  });
});

describe("change stream", () => {
  it("backs off from 250 ms, doubling to 30 s, with at most 20% jitter taken off", () => {
    expect(watchBackoffMs(0, 0)).toBe(WATCH_MIN_BACKOFF_MS);
    expect(watchBackoffMs(1, 0)).toBe(500);
    expect(watchBackoffMs(3, 1)).toBe(1600);
    expect(watchBackoffMs(50, 0)).toBe(WATCH_MAX_BACKOFF_MS);
  });

  it("syncs on every notice, reopens after the stream ends, and follows the client to another server", async () => {
    const opened: { address: string; onNotice: (r: string) => void; onEnd: (e: SigilError) => void; cancelled: boolean }[] = [];
    const client = {
      currentAddress: "a:1",
      watchChanges(onNotice: (r: string) => void, onEnd: (e: SigilError) => void): ChangeWatch {
        const w = { address: client.currentAddress, onNotice, onEnd, cancelled: false };
        opened.push(w);
        return { cancel: () => void (w.cancelled = true) };
      },
    } as unknown as ServerClient & { currentAddress: string };
    let syncs = 0;
    const watcher = new ChangeWatcher({ client, onChange: () => syncs++, random: () => 0 });
    watcher.start();
    expect(opened).toHaveLength(1);
    opened[0]!.onNotice("x");
    opened[0]!.onNotice("y");
    expect(syncs).toBe(2);
    opened[0]!.onEnd(new SigilError("ERR_UNAVAILABLE", "gone"));
    expect(watcher.open).toBe(false);
    await new Promise((r) => setTimeout(r, WATCH_MIN_BACKOFF_MS + 100));
    expect(opened).toHaveLength(2);
    client.currentAddress = "b:2";
    watcher.follow();
    expect(opened[1]!.cancelled).toBe(true);
    expect(opened.map((o) => o.address)).toEqual(["a:1", "a:1", "b:2"]);
    watcher.stop();
    expect(opened[2]!.cancelled).toBe(true);
  });

  it("a stream refused as rate limited is opened again no sooner than the server's retry hint", () => {
    vi.useFakeTimers();
    try {
      let opened = 0;
      let end: ((e: SigilError) => void) | undefined;
      const client = {
        watchChanges(_onNotice: (r: string) => void, onEnd: (e: SigilError) => void): ChangeWatch {
          opened++;
          end = onEnd;
          return { cancel: () => undefined };
        },
      } as unknown as ServerClient;
      const watcher = new ChangeWatcher({ client, onChange: () => undefined, random: () => 0 });
      watcher.start();
      end!(new SigilError("ERR_RESOURCE_EXHAUSTED", "sync: WatchChanges: watch changes: rate limit: …; retry after 5000ms", { retryAfterMs: 5_000 }));
      vi.advanceTimersByTime(4_999);
      expect(opened).toBe(1);
      vi.advanceTimersByTime(1);
      expect(opened).toBe(2);
      watcher.stop();
    } finally {
      vi.useRealTimers();
    }
  });
});

describe("server addresses", () => {
  it("parses host:port and bracketed IPv6, naming the key", () => {
    expect(parseHostPort("server.example:8081", "agent.server_addresses[0]")).toEqual({ host: "server.example", port: 8081 });
    expect(parseHostPort("[::1]:8081", "x")).toEqual({ host: "::1", port: 8081 });
    expect(() => parseHostPort("server.example", "agent.server_addresses[1]")).toThrow(/^agent.server_addresses\[1\]: "server.example" is not host:port/);
    expect(() => parseHostPort("::1:8081", "x")).toThrow(/is not host:port/);
    expect(() => parseHostPort("h:0", "x")).toThrow(/is not host:port/);
    expect(() => parseHostPort("[nope]:1", "x")).toThrow(/not host:port|not an IPv6/);
  });

  it("expands a name with several A/AAAA records into one target each, keeps single-address and unresolvable names", async () => {
    const dns: Record<string, string[]> = { "servers.example": ["10.0.0.1", "10.0.0.2", "fd00::3"], "one.example": ["10.0.0.9"] };
    const resolve = async (h: string): Promise<string[]> => {
      const r = dns[h];
      if (!r) throw new Error("ENOTFOUND");
      return r;
    };
    expect(
      await resolveServerTargets(
        [
          { host: "servers.example", port: 8081 },
          { host: "one.example", port: 8081 },
          { host: "gone.example", port: 8081 },
          { host: "10.0.0.1", port: 8081 },
        ],
        resolve,
      ),
    ).toEqual(["10.0.0.1:8081", "10.0.0.2:8081", "[fd00::3]:8081", "one.example:8081", "gone.example:8081"]);
  });
});
