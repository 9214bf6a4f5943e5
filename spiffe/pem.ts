/**
 * PEM (RFC 7468) encoding and decoding of certificates and PKCS#8 private keys.
 * The Workload API never uses PEM (pitfall A18); PEM is for files, CLIs and
 * tests. Errors are `ERR_DER_INVALID` and name the block they are about.
 */
import { readTlv, TAG } from "./der.js";
import { SigilError } from "./errors.js";

/** The PEM labels Sigil reads and writes. */
export type PemLabel = "CERTIFICATE" | "PRIVATE KEY" | "PUBLIC KEY" | "CERTIFICATE REQUEST" | "X509 CRL";

/** One decoded PEM block. */
export interface PemBlock {
  /** The label between `-----BEGIN ` and `-----` (kept as written). */
  readonly label: string;
  /** The decoded DER. */
  readonly der: Uint8Array;
}

function pemError(message: string): SigilError {
  return new SigilError("ERR_DER_INVALID", `pem: ${message}`);
}

/** Encodes one DER value as a PEM block with 64-character lines and a trailing newline. */
export function toPem(label: PemLabel, der: Uint8Array): string {
  const b64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString("base64");
  const lines: string[] = [];
  for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
  return `-----BEGIN ${label}-----\n${lines.join("\n")}\n-----END ${label}-----\n`;
}

// Boundaries are found separately: one regexp with a lazy body between them
// rescans the rest of the text from every BEGIN, which is quadratic on text
// made of BEGIN lines without an END (680 KB of them took 13 s).
const BEGIN = /-----BEGIN ([A-Z0-9 ]+)-----/g;
const END = /-----END ([A-Z0-9 ]+)-----/g;

/**
 * Decodes every PEM block in `text`, in order. Text outside blocks (comments,
 * `openssl x509 -text` output) is ignored. Each block must hold exactly one
 * DER element.
 *
 * @throws SigilError `ERR_DER_INVALID` naming the block (`block 2 (CERTIFICATE)`).
 */
export function decodePem(text: string): PemBlock[] {
  if (typeof text !== "string") throw pemError("input is not a string");
  const blocks: PemBlock[] = [];
  for (let pos = 0; ; ) {
    BEGIN.lastIndex = pos;
    const beginLine = BEGIN.exec(text);
    if (beginLine === null) break;
    const bodyStart = beginLine.index + beginLine[0].length;
    END.lastIndex = bodyStart;
    const endLine = END.exec(text);
    if (endLine === null) break; // a BEGIN without an END, like any text outside blocks, is ignored
    pos = endLine.index + endLine[0].length;
    const begin = beginLine[1] as string;
    const end = endLine[1] as string;
    const body = text.slice(bodyStart, endLine.index);
    const name = `block ${blocks.length + 1} (${begin})`;
    if (begin !== end) throw pemError(`${name} ends with END ${end}`);
    const b64 = body.replace(/\s+/g, "");
    if (b64.includes(":")) throw pemError(`${name} has headers (encrypted PEM is not supported)`);
    if (b64.length === 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(b64) || b64.length % 4 !== 0) {
      throw pemError(`${name} is not valid base64`);
    }
    const der = new Uint8Array(Buffer.from(b64, "base64"));
    try {
      if (readTlv(der, 0).end !== der.length) throw pemError(`${name} has bytes after its DER element`);
    } catch (e) {
      if (e instanceof SigilError && e.message.startsWith("pem:")) throw e;
      throw new SigilError("ERR_DER_INVALID", `pem: ${name} is not DER: ${(e as Error).message}`, { cause: e });
    }
    blocks.push({ label: begin, der });
  }
  return blocks;
}

function blocksWithLabel(text: string, label: PemLabel): PemBlock[] {
  const blocks = decodePem(text);
  blocks.forEach((b, i) => {
    if (b.label !== label) throw pemError(`block ${i + 1} is ${b.label}, expected ${label}`);
    if (b.der[0] !== TAG.SEQUENCE) throw pemError(`block ${i + 1} (${label}) is not a DER SEQUENCE`);
  });
  return blocks;
}

/**
 * Decodes a PEM file of one or more certificates (a chain or a bundle) into DER, in order.
 *
 * @throws SigilError `ERR_DER_INVALID` when there is no block or a block is not a CERTIFICATE.
 */
export function decodePemCertificates(text: string): Uint8Array[] {
  const blocks = blocksWithLabel(text, "CERTIFICATE");
  if (blocks.length === 0) throw pemError("no CERTIFICATE block found");
  return blocks.map((b) => b.der);
}

/** Encodes certificates (DER, leaf first) as concatenated PEM blocks. */
export function encodePemCertificates(ders: readonly Uint8Array[]): string {
  return ders.map((d) => toPem("CERTIFICATE", d)).join("");
}

/**
 * Decodes exactly one unencrypted PKCS#8 `PRIVATE KEY` block into DER.
 *
 * @throws SigilError `ERR_DER_INVALID` for no block, several blocks, or another label
 * (e.g. `EC PRIVATE KEY`, which is SEC 1, not PKCS#8).
 */
export function decodePemPrivateKey(text: string): Uint8Array {
  const blocks = blocksWithLabel(text, "PRIVATE KEY");
  const [first] = blocks;
  if (first === undefined) throw pemError("no PRIVATE KEY block found");
  if (blocks.length > 1) throw pemError(`expected one PRIVATE KEY block, found ${blocks.length}`);
  return first.der;
}

/** Encodes unencrypted PKCS#8 DER as a `PRIVATE KEY` block. */
export function encodePemPrivateKey(pkcs8Der: Uint8Array): string {
  return toPem("PRIVATE KEY", pkcs8Der);
}
