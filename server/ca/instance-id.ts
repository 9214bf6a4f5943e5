/**
 * The name of this server instance among the servers sharing one database
 * (its CA journal rows carry it): `server.server_id` when configured, else a
 * random name made on first start and kept in `<data_dir>/server-id`, so it
 * stays the same across restarts of a server with the same data directory
 * (where a `disk` KeyManager's keys usually live too).
 */
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { SigilError } from "../../spiffe/errors.js";

/** The file in `data_dir` holding the generated name. */
export const SERVER_ID_FILE = "server-id";

const NAME = /^[A-Za-z0-9._-]{1,64}$/;

/**
 * This server's instance name; see the module comment.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming `server.server_id` or the
 * file when the name there is malformed or the file cannot be written.
 */
export function serverInstanceId(configured: string | undefined, dataDir: string): string {
  if (configured !== undefined) {
    if (!NAME.test(configured)) throw new SigilError("ERR_INVALID_ARGUMENT", "server.server_id: must be 1-64 of A-Z a-z 0-9 . _ -");
    return configured;
  }
  const file = path.join(dataDir, SERVER_ID_FILE);
  let text: string | undefined;
  try {
    text = readFileSync(file, "utf8").trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw new SigilError("ERR_INVALID_ARGUMENT", `server.data_dir: cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  if (text !== undefined) {
    if (!NAME.test(text)) throw new SigilError("ERR_INVALID_ARGUMENT", `server.data_dir: ${file} does not hold a server name (1-64 of A-Z a-z 0-9 . _ -); remove it to make a new one`);
    return text;
  }
  const id = `server-${randomBytes(8).toString("hex")}`;
  try {
    mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    // "wx": two servers starting on one data directory keep the first name.
    writeFileSync(file, `${id}\n`, { mode: 0o600, flag: "wx" });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return serverInstanceId(undefined, dataDir);
    throw new SigilError("ERR_INVALID_ARGUMENT", `server.data_dir: cannot write ${file}: ${(e as Error).message}`, { cause: e });
  }
  return id;
}
