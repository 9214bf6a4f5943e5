/**
 * Big-endian marshalling of TPM 2.0 wire types (TPM 2.0 Library, Part 2):
 * fixed-size integers and `TPM2B_*` (a 16-bit size, then that many bytes).
 * A {@link TpmReader} never reads past its buffer: a truncated or oversized
 * structure fails with an error naming the field being read.
 */
import { SigilError } from "../../../../spiffe/errors.js";

/** Builds a byte string from TPM wire types, growing as needed. */
export class TpmWriter {
  private buf = new Uint8Array(256);
  private len = 0;

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }

  /** Appends an unsigned 8-bit value. */
  u8(v: number): this {
    checkUint(v, 0xff, "u8");
    this.room(1);
    this.buf[this.len++] = v;
    return this;
  }

  /** Appends an unsigned 16-bit value. */
  u16(v: number): this {
    checkUint(v, 0xffff, "u16");
    this.room(2);
    this.buf[this.len++] = v >>> 8;
    this.buf[this.len++] = v & 0xff;
    return this;
  }

  /** Appends an unsigned 32-bit value. */
  u32(v: number): this {
    checkUint(v, 0xffffffff, "u32");
    this.room(4);
    new DataView(this.buf.buffer, this.buf.byteOffset).setUint32(this.len, v);
    this.len += 4;
    return this;
  }

  /** Appends a signed 32-bit value. */
  i32(v: number): this {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw marshalError(`i32 value ${v} is out of range`);
    this.room(4);
    new DataView(this.buf.buffer, this.buf.byteOffset).setInt32(this.len, v);
    this.len += 4;
    return this;
  }

  /** Appends an unsigned 64-bit value. */
  u64(v: bigint): this {
    if (v < 0n || v > 0xffffffffffffffffn) throw marshalError(`u64 value ${v} is out of range`);
    this.room(8);
    new DataView(this.buf.buffer, this.buf.byteOffset).setBigUint64(this.len, v);
    this.len += 8;
    return this;
  }

  /** Appends raw bytes (no size prefix). */
  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.buf.set(b, this.len);
    this.len += b.length;
    return this;
  }

  /** Appends a `TPM2B_*`: a 16-bit size, then the bytes. */
  tpm2b(b: Uint8Array): this {
    if (b.length > 0xffff) throw marshalError(`a TPM2B of ${b.length} bytes exceeds 65535`);
    return this.u16(b.length).bytes(b);
  }

  /** Appends a `TPM2B_*` whose content is written by `fill` (e.g. TPM2B_PUBLIC around a TPMT_PUBLIC). */
  sized(fill: (w: TpmWriter) => void): this {
    const inner = new TpmWriter();
    fill(inner);
    return this.tpm2b(inner.finish());
  }

  /** Bytes written so far. */
  get length(): number {
    return this.len;
  }

  /** A copy of the bytes written. */
  finish(): Uint8Array {
    return this.buf.slice(0, this.len);
  }
}

/** Reads TPM wire types from a byte string, front to back, with bounds checks. */
export class TpmReader {
  private pos = 0;
  private readonly view: DataView;

  /**
   * @param buf - the bytes to read
   * @param what - names the structure in errors (`TPMS_ATTEST`, `TPM2_Quote response`)
   */
  constructor(
    private readonly buf: Uint8Array,
    private readonly what: string,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  private need(n: number, field: string): void {
    if (this.pos + n > this.buf.length) {
      throw marshalError(`${this.what}: truncated at ${field} (needs ${n} bytes at offset ${this.pos}, ${this.buf.length - this.pos} left)`);
    }
  }

  /** Reads an unsigned 8-bit value. */
  u8(field: string): number {
    this.need(1, field);
    return this.buf[this.pos++] as number;
  }

  /** Reads an unsigned 16-bit value. */
  u16(field: string): number {
    this.need(2, field);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }

  /** Reads an unsigned 32-bit value. */
  u32(field: string): number {
    this.need(4, field);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }

  /** Reads a signed 32-bit value. */
  i32(field: string): number {
    this.need(4, field);
    const v = this.view.getInt32(this.pos);
    this.pos += 4;
    return v;
  }

  /** Reads an unsigned 64-bit value. */
  u64(field: string): bigint {
    this.need(8, field);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }

  /** Reads `n` raw bytes (a copy). */
  bytes(n: number, field: string): Uint8Array {
    this.need(n, field);
    const b = this.buf.slice(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }

  /**
   * Reads a `TPM2B_*`. `max` is the largest size the structure allows (e.g. 64
   * for a TPM2B_DIGEST); a larger size is refused.
   */
  tpm2b(field: string, max = 0xffff): Uint8Array {
    const n = this.u16(`${field} size`);
    if (n > max) throw marshalError(`${this.what}: ${field} is ${n} bytes, more than the ${max} allowed`);
    return this.bytes(n, field);
  }

  /** Reads a `TPM2B_*` and parses its content with `parse`, which must use all of it. */
  sized<T>(field: string, parse: (r: TpmReader) => T): T {
    const inner = new TpmReader(this.tpm2b(field), `${this.what}.${field}`);
    const v = parse(inner);
    inner.end();
    return v;
  }

  /** Bytes not read yet. */
  get remaining(): number {
    return this.buf.length - this.pos;
  }

  /** Current offset. */
  get offset(): number {
    return this.pos;
  }

  /** Throws when bytes are left over (a structure must be consumed exactly). */
  end(): void {
    if (this.pos !== this.buf.length) throw marshalError(`${this.what}: ${this.buf.length - this.pos} unexpected trailing bytes`);
  }
}

function checkUint(v: number, max: number, kind: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw marshalError(`${kind} value ${v} is out of range`);
}

function marshalError(message: string): SigilError {
  return new SigilError("ERR_INVALID_ARGUMENT", `tpm: ${message}`);
}
