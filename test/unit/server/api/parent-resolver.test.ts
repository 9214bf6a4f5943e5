/**
 * The admin API's parent resolver: attested agents, entry SPIFFE IDs, the
 * agent IDs of join tokens this process issued (until they expire), and the
 * agent IDs a NodeAttestor vouches for in advance.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ManualClock } from "../../../../common/clock.js";
import { parseSelector } from "../../../../common/selector.js";
import { createParentResolver, type DatastoreParentResolver } from "../../../../server/api/parent-resolver.js";
import { createSqliteDatastore, type Datastore } from "../../../../server/datastore/index.js";

let dir: string;
let clock: ManualClock;
let ds: Datastore;
let resolver: DatastoreParentResolver;

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), "sigil-parents-"));
  clock = new ManualClock(new Date("2030-01-01T00:00:00Z"));
  ds = await createSqliteDatastore({ path: join(dir, "ds.sqlite3"), clock });
  resolver = createParentResolver({ datastore: ds, now: () => clock.now() });
});

afterEach(async () => {
  await ds.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("DatastoreParentResolver", () => {
  it("knows attested agents and entry SPIFFE IDs, and nothing else", async () => {
    await ds.createAgent({ spiffeId: "spiffe://example.org/agent/a", attestationType: "x", certSerial: "1", certNotAfter: new Date("2031-01-01T00:00:00Z") });
    await ds.createEntry({ spiffeId: "spiffe://example.org/alias", parentId: "spiffe://example.org/spire/server", selectors: [parseSelector("k8s:ns:a")] });
    expect(await resolver.parentExists("spiffe://example.org/agent/a")).toBe(true);
    expect(await resolver.parentExists("spiffe://example.org/alias")).toBe(true);
    expect(await resolver.parentExists("spiffe://example.org/agent/b")).toBe(false);
  });

  it("knows a remembered join token's agent ID until the token expires", async () => {
    const id = "spiffe://example.org/spire/agent/join_token/abc";
    resolver.rememberJoinToken(id, new Date(clock.now().getTime() + 60_000));
    expect(await resolver.parentExists(id)).toBe(true);
    clock.advance(59_999);
    expect(await resolver.parentExists(id)).toBe(true);
    clock.advance(1);
    expect(await resolver.parentExists(id)).toBe(false);
  });

  it("keeps the later expiry when two tokens give the same agent ID", async () => {
    const id = "spiffe://example.org/host/h";
    resolver.rememberJoinToken(id, new Date(clock.now().getTime() + 120_000));
    resolver.rememberJoinToken(id, new Date(clock.now().getTime() + 10_000));
    clock.advance(60_000);
    expect(await resolver.parentExists(id)).toBe(true);
  });

  it("knows an agent ID a NodeAttestor says it gives, before any agent has it", async () => {
    const psatId = "spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-1";
    const withHook = createParentResolver({ datastore: ds, now: () => clock.now(), issuesAgentId: (id) => id === psatId });
    expect(await withHook.parentExists(psatId)).toBe(true);
    expect(await withHook.parentExists("spiffe://example.org/spire/agent/k8s_psat/prod/node-uid-2")).toBe(false);
    // Without the hook (no such attestor configured), the same ID is unknown.
    expect(await resolver.parentExists(psatId)).toBe(false);
  });
});
