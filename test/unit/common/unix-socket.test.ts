/**
 * Claiming a Unix socket path (common/unix-socket.ts): a path longer than
 * `sun_path` holds is refused. Node binds such a path silently truncated, so
 * the socket would land at a prefix of it, possibly in a directory above the
 * one that was checked (a sticky /tmp, where another user could have taken
 * the name first), and clients of other languages could not connect at all.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { createLogger } from "../../../common/log.js";
import { prepareSocketPath } from "../../../common/unix-socket.js";
import { isSigilError } from "../../../spiffe/errors.js";
import { MAX_UNIX_SOCKET_PATH_BYTES as MAX_SOCKET_PATH_BYTES } from "../../../spiffe/workloadapi/address.js";

const base = mkdtempSync(path.join(tmpdir(), "sigil-unix-socket-"));
afterAll(() => rmSync(base, { recursive: true, force: true }));
const log = createLogger({ level: "error", destination: { write: () => undefined } });

/** A socket path under `base` exactly `bytes` long. */
function pathOf(bytes: number): string {
  const dir = path.join(base, "d");
  const name = "s".repeat(bytes - dir.length - 1 - ".sock".length);
  return path.join(dir, `${name}.sock`);
}

describe("prepareSocketPath", () => {
  it(`refuses a path longer than ${MAX_SOCKET_PATH_BYTES} bytes, saying how long it is`, async () => {
    const p = pathOf(MAX_SOCKET_PATH_BYTES + 1);
    const e = await prepareSocketPath(p, { dirMode: 0o700, subsystem: "workload endpoint", log }).then(
      () => undefined,
      (err: unknown) => err,
    );
    expect(isSigilError(e, "ERR_INVALID_ARGUMENT"), String(e)).toBe(true);
    expect((e as Error).message).toBe(`workload endpoint: socket path ${p} is 108 bytes long; a Unix socket path holds at most 107`);
  });

  it(`accepts a path of ${MAX_SOCKET_PATH_BYTES} bytes`, async () => {
    await prepareSocketPath(pathOf(MAX_SOCKET_PATH_BYTES), { dirMode: 0o700, subsystem: "workload endpoint", log });
  });
});
