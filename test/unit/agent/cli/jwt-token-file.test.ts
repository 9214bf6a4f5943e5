/**
 * The token file of `api fetch jwt --write --refresh`: when a replacement is
 * fetched (60% of the lifetime, at least 1 s away), how failures back off,
 * and that the loop writes each new token once, leaves the file alone when a
 * fetch fails or returns the token already written, and stops on its signal.
 */
import { readFileSync, statSync } from "node:fs";
import path from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import { keepTokenFileFresh, refreshDelayMs, retryDelayMs, writeTokenFile } from "../../../../agent/cli/jwt-token-file.js";
import { parseSpiffeId } from "../../../../spiffe/id.js";
import type { WorkloadJwtSvid } from "../../../../spiffe/workloadapi/jwt-context.js";
import { testTempDir } from "../../../support/temp-dir.js";

const T = new Date("2026-06-01T00:00:00Z");
const at = (s: number) => new Date(T.getTime() + s * 1000);

function svid(token: string, iatS: number, expS: number): WorkloadJwtSvid {
  return {
    token,
    hint: "",
    spiffeId: parseSpiffeId("spiffe://example.org/ci"),
    claims: { iat: at(iatS).getTime() / 1000, exp: at(expS).getTime() / 1000 },
    header: { alg: "ES256", kid: "k", typ: "JWT" },
    expiresAt: at(expS),
    audience: ["sts"],
  } as unknown as WorkloadJwtSvid;
}

afterEach(() => {
  vi.useRealTimers();
});

describe("token file refresh", () => {
  it.each([
    // issued, expires, now → delay (s)
    [0, 300, 0, 180],
    [0, 300, 100, 80],
    [0, 300, 179.5, 1], // never sooner than 1 s
    [0, 300, 400, 1], // already past: at once (1 s)
    [0, 6, 0, 3.6],
  ])("a token valid from %s s to %s s, at %s s: replaced in %s s", (iat, exp, now, delay) => {
    expect(refreshDelayMs(at(iat), at(exp), at(now))).toBeCloseTo(delay * 1000, 0);
  });

  it("backs off 1, 2, 4 … seconds, at most 30", () => {
    expect([1, 2, 3, 4, 5, 6, 10].map(retryDelayMs)).toEqual([1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  });

  it("writes a one-line file of mode 0600", () => {
    const file = path.join(testTempDir("sigil-token-"), "token");
    writeTokenFile(file, "a.b.c");
    expect(readFileSync(file, "utf8")).toBe("a.b.c\n");
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it("writes each new token once, keeps the file through failures and repeats, and stops on its signal", async () => {
    vi.useFakeTimers({ now: T });
    const fetched = [svid("t1", 0, 10), svid("t1", 0, 10), new Error("agent unavailable"), svid("t2", 7, 17)];
    const writes: string[] = [];
    const reports: string[] = [];
    const stop = new AbortController();
    const done = keepTokenFileFresh("/x/token", {
      fetch: async () => {
        const next = fetched.shift();
        if (next === undefined) {
          stop.abort();
          return svid("t2", 7, 17);
        }
        if (next instanceof Error) throw next;
        return next;
      },
      write: (_file, token) => void writes.push(token),
      report: (line) => void reports.push(line),
      now: () => new Date(),
      signal: stop.signal,
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(writes).toEqual(["t1"]);
    await vi.advanceTimersByTimeAsync(6_000); // 60% of 10 s: fetched again, the same token
    expect(writes).toEqual(["t1"]);
    await vi.advanceTimersByTimeAsync(1_000); // a failure: the file is left as it was
    expect(writes).toEqual(["t1"]);
    expect(reports.at(-1)).toMatch(/refreshing \/x\/token failed \(agent unavailable\); the file is unchanged; retrying in 1 s/);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(writes).toEqual(["t1", "t2"]);
    await vi.advanceTimersByTimeAsync(10_000);
    await done;
    expect(writes).toEqual(["t1", "t2"]);
    expect(reports.filter((r) => r.includes("wrote /x/token: JWT-SVID of spiffe://example.org/ci"))).toHaveLength(2);
  });
});
