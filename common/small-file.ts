/**
 * Reading a small file named in a config (a token, a CA bundle) without
 * trusting the name: a path that leads to a device (`/dev/zero`,
 * `/dev/urandom`) or a FIFO would otherwise be read until memory runs out or
 * block forever, and a huge file would be held whole in memory. The file is
 * opened non-blocking (a FIFO then opens at once instead of waiting for a
 * writer), must be a regular file, and may hold at most `maxBytes`.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { open } from "node:fs/promises";

/** Why a file named in a config cannot be read as a small file. */
export class SmallFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "SmallFileError";
  }
}

const FLAGS = constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY;

function checkStat(file: string, isFile: boolean, size: number, maxBytes: number): void {
  if (!isFile) throw new SmallFileError(`${file} is not a regular file`);
  if (size > maxBytes) throw new SmallFileError(`${file} is larger than ${maxBytes} bytes (${size})`);
}

function tooLarge(file: string, maxBytes: number): SmallFileError {
  return new SmallFileError(`${file} is larger than ${maxBytes} bytes`);
}

/**
 * The content of `file`, a regular file of at most `maxBytes`.
 *
 * @throws SmallFileError when it is not a regular file or is larger;
 *   the `open` error (ENOENT, EACCES…) when it cannot be opened.
 */
export function readSmallFileSync(file: string, maxBytes: number): Buffer {
  const fd = openSync(file, FLAGS);
  try {
    const st = fstatSync(fd);
    checkStat(file, st.isFile(), st.size, maxBytes);
    // One byte more than allowed, to notice a file that grew since the stat.
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    for (;;) {
      const r = readSync(fd, buf, n, buf.length - n, null);
      if (r === 0) break;
      n += r;
      if (n > maxBytes) throw tooLarge(file, maxBytes);
    }
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

/** {@link readSmallFileSync}, without blocking the event loop. */
export async function readSmallFile(file: string, maxBytes: number): Promise<Buffer> {
  const fh = await open(file, FLAGS);
  try {
    const st = await fh.stat();
    checkStat(file, st.isFile(), st.size, maxBytes);
    const buf = Buffer.alloc(maxBytes + 1);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n > maxBytes) throw tooLarge(file, maxBytes);
    }
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}
