import { readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { describe, expect, it } from "vitest";
import { SERVER_ID_FILE, serverInstanceId } from "../../../../server/ca/instance-id.js";
import { testTempDir } from "../../../support/temp-dir.js";

describe("serverInstanceId", () => {
  it("uses server.server_id when configured, and refuses a malformed one naming the key", () => {
    expect(serverInstanceId("eu-1.a", testTempDir("sigil-id-"))).toBe("eu-1.a");
    expect(() => serverInstanceId("has space", testTempDir("sigil-id-"))).toThrow(/server\.server_id/);
  });

  it("otherwise makes a name on first start, keeps it in <data_dir>/server-id, and reads it back after", () => {
    const dir = path.join(testTempDir("sigil-id-"), "data");
    const first = serverInstanceId(undefined, dir);
    expect(first).toMatch(/^server-[0-9a-f]{16}$/);
    expect(readFileSync(path.join(dir, SERVER_ID_FILE), "utf8").trim()).toBe(first);
    expect(serverInstanceId(undefined, dir)).toBe(first);
    // Another data directory: another server.
    expect(serverInstanceId(undefined, path.join(dir, "other"))).not.toBe(first);
  });

  it("refuses a file that does not hold a name, naming the file", () => {
    const dir = testTempDir("sigil-id-");
    writeFileSync(path.join(dir, SERVER_ID_FILE), "not a name!\n");
    expect(() => serverInstanceId(undefined, dir)).toThrow(/server-id does not hold a server name/);
  });
});
