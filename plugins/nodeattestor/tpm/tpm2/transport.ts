/**
 * Transports that carry raw TPM 2.0 command and response bytes: the kernel's
 * resource-managed character device (`/dev/tpmrm0`: write one command, read
 * one response) or a TCP connection to a simulator such as swtpm, whose
 * server port speaks the same bytes. One command is in flight at a time; the
 * response's length comes from its header.
 */
import { open, type FileHandle } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { SigilError } from "../../../../spiffe/errors.js";
import { commandName, TPM_HEADER_BYTES } from "./commands.js";

/** Largest response accepted (TPMs answer at most a few KiB; MAX_RESPONSE_SIZE is typically 4096). */
export const MAX_TPM_RESPONSE_BYTES = 64 * 1024;

/** How long a command may take unless the caller says otherwise (RSA key generation is slow on some TPMs). */
export const DEFAULT_TPM_COMMAND_TIMEOUT_MS = 120_000;

/** Sends TPM commands and returns their responses, one at a time. */
export interface TpmTransport {
  /** Sends one marshalled command and resolves with the whole response. */
  transmit(command: Uint8Array): Promise<Uint8Array>;
  /** Releases the device or connection; pending commands fail. */
  close(): Promise<void>;
}

/** Options shared by the transports. */
export interface TpmTransportOptions {
  /** Per-command timeout in milliseconds; {@link DEFAULT_TPM_COMMAND_TIMEOUT_MS} by default. */
  readonly timeoutMs?: number;
}

function ccOf(command: Uint8Array): string {
  if (command.length < TPM_HEADER_BYTES) return "TPM2 command";
  return commandName(new DataView(command.buffer, command.byteOffset).getUint32(6));
}

/** The total size a response header announces, checked against limits. */
function announcedSize(head: Uint8Array, cmd: string): number {
  const size = new DataView(head.buffer, head.byteOffset).getUint32(2);
  if (size < TPM_HEADER_BYTES || size > MAX_TPM_RESPONSE_BYTES) {
    throw new SigilError("ERR_INTERNAL", `tpm: ${cmd}: the response header announces ${size} bytes (allowed ${TPM_HEADER_BYTES}..${MAX_TPM_RESPONSE_BYTES})`);
  }
  return size;
}

/** Runs `fn` for one command at a time, in call order. */
class Serial {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.tail.then(fn, fn);
    this.tail = next.catch(() => undefined);
    return next;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, cmd: string, where: string, onTimeout: () => void): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      onTimeout();
      reject(new SigilError("ERR_UNAVAILABLE", `tpm: ${cmd}: no response from ${where} within ${ms} ms`));
    }, ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * Opens a TPM character device (`/dev/tpmrm0`, or `/dev/tpm0` without the
 * kernel resource manager). With `/dev/tpmrm0` the kernel flushes what this
 * process left loaded when the device is closed.
 */
export async function openDeviceTransport(path: string, options: TpmTransportOptions = {}): Promise<TpmTransport> {
  let fh: FileHandle;
  try {
    fh = await open(path, "r+");
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new SigilError("ERR_UNAVAILABLE", `tpm: cannot open the TPM device ${path}: ${code}${code === "EACCES" ? " (the agent's user needs read/write access, usually the tss group)" : ""}`, { cause: e });
  }
  const timeoutMs = options.timeoutMs ?? DEFAULT_TPM_COMMAND_TIMEOUT_MS;
  const serial = new Serial();
  let broken: SigilError | undefined;
  let closed = false;

  const exchange = async (command: Uint8Array, cmd: string): Promise<Uint8Array> => {
    await fh.write(command, 0, command.length);
    const buf = new Uint8Array(MAX_TPM_RESPONSE_BYTES);
    let got = 0;
    let want = TPM_HEADER_BYTES;
    while (got < want) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, null);
      if (bytesRead === 0) throw new SigilError("ERR_UNAVAILABLE", `tpm: ${cmd}: ${path} returned end of file after ${got} bytes`);
      got += bytesRead;
      if (got >= TPM_HEADER_BYTES) want = announcedSize(buf, cmd);
    }
    if (got !== want) throw new SigilError("ERR_INTERNAL", `tpm: ${cmd}: ${path} returned ${got} bytes for a ${want}-byte response`);
    return buf.slice(0, got);
  };

  return {
    transmit(command) {
      return serial.run(async () => {
        const cmd = ccOf(command);
        if (closed) throw new SigilError("ERR_UNAVAILABLE", `tpm: ${cmd}: the TPM device ${path} is closed`);
        if (broken !== undefined) throw broken;
        try {
          return await withTimeout(exchange(command, cmd), timeoutMs, cmd, path, () => undefined);
        } catch (e) {
          // A timed-out or half-read exchange leaves the device out of step: no later command can trust it.
          broken = new SigilError("ERR_UNAVAILABLE", `tpm: the TPM device ${path} is unusable after an earlier failure`, { cause: e });
          if (e instanceof SigilError) throw e;
          throw new SigilError("ERR_UNAVAILABLE", `tpm: ${cmd}: ${path}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`, { cause: e });
        }
      });
    },
    async close() {
      if (closed) return;
      closed = true;
      await fh.close().catch(() => undefined);
    },
  };
}

/** Where a TCP TPM simulator listens. */
export interface TpmSimulatorAddress {
  readonly host: string;
  readonly port: number;
}

/**
 * Connects to a TPM simulator's command port (swtpm `--server type=tcp`),
 * which carries raw TPM 2.0 commands and responses. For tests: a simulator
 * holds no hardware-protected secrets. A simulator has no resource manager,
 * so whatever the caller leaves loaded stays loaded.
 */
export async function openTcpTransport(address: TpmSimulatorAddress, options: TpmTransportOptions = {}): Promise<TpmTransport> {
  const where = `the TPM simulator at ${address.host}:${address.port}`;
  const timeoutMs = options.timeoutMs ?? DEFAULT_TPM_COMMAND_TIMEOUT_MS;
  const socket: Socket = await new Promise((resolve, reject) => {
    const s = connect({ host: address.host, port: address.port });
    const timer = setTimeout(() => {
      s.destroy();
      reject(new SigilError("ERR_UNAVAILABLE", `tpm: cannot connect to ${where}: timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    s.once("connect", () => {
      clearTimeout(timer);
      s.removeAllListeners("error");
      resolve(s);
    });
    s.once("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new SigilError("ERR_UNAVAILABLE", `tpm: cannot connect to ${where}: ${e.code ?? e.message}`, { cause: e }));
    });
  });
  socket.setNoDelay(true);

  const serial = new Serial();
  let chunks: Buffer[] = [];
  let received = 0;
  let pending: { cmd: string; resolve: (b: Uint8Array) => void; reject: (e: Error) => void } | undefined;
  let failure: SigilError | undefined;

  const fail = (e: SigilError): void => {
    failure ??= e;
    const p = pending;
    pending = undefined;
    p?.reject(e);
    socket.destroy();
  };

  socket.on("data", (data: Buffer) => {
    if (pending === undefined) {
      fail(new SigilError("ERR_INTERNAL", `tpm: ${where} sent ${data.length} bytes nobody asked for`));
      return;
    }
    chunks.push(data);
    received += data.length;
    if (received < TPM_HEADER_BYTES) return;
    const all = Buffer.concat(chunks);
    chunks = [all];
    let size: number;
    try {
      size = announcedSize(all, pending.cmd);
    } catch (e) {
      fail(e as SigilError);
      return;
    }
    if (received < size) return;
    if (received > size) {
      fail(new SigilError("ERR_INTERNAL", `tpm: ${pending.cmd}: ${where} sent ${received} bytes for a ${size}-byte response`));
      return;
    }
    const p = pending;
    pending = undefined;
    chunks = [];
    received = 0;
    p.resolve(new Uint8Array(all));
  });
  socket.on("error", (e: NodeJS.ErrnoException) => {
    fail(new SigilError("ERR_UNAVAILABLE", `tpm: ${pending?.cmd ?? "connection"}: ${where}: ${e.code ?? e.message}`, { cause: e }));
  });
  socket.on("close", () => {
    fail(new SigilError("ERR_UNAVAILABLE", `tpm: ${pending?.cmd ?? "connection"}: ${where} closed the connection`));
  });

  return {
    transmit(command) {
      return serial.run(async () => {
        const cmd = ccOf(command);
        if (failure !== undefined) throw new SigilError("ERR_UNAVAILABLE", `tpm: ${cmd}: ${failure.message}`, { cause: failure });
        const response = new Promise<Uint8Array>((resolve, reject) => {
          pending = { cmd, resolve, reject };
        });
        socket.write(command);
        return withTimeout(response, timeoutMs, cmd, where, () => {
          fail(new SigilError("ERR_UNAVAILABLE", `tpm: ${cmd}: no response from ${where} within ${timeoutMs} ms`));
        });
      });
    },
    async close() {
      failure ??= new SigilError("ERR_UNAVAILABLE", `tpm: the connection to ${where} is closed`);
      if (socket.destroyed) return;
      await new Promise<void>((resolve) => {
        socket.once("close", () => resolve());
        socket.end();
        // A peer that never closes its side must not hold close() up.
        setTimeout(() => socket.destroy(), 1000).unref();
      });
    },
  };
}
