/**
 * Pagination shared by every list call: an opaque page token that resumes
 * after the last object returned, in a stable creation order.
 */
import { SigilError } from "../../spiffe/errors.js";

/** Largest page a caller may ask for. */
export const MAX_PAGE_SIZE = 10_000;

/** Paging arguments of a list call. */
export interface PageRequest {
  /** Objects per page, 1 … {@link MAX_PAGE_SIZE}; omitted returns everything in one page. */
  readonly pageSize?: number;
  /** The `nextPageToken` of the previous page; omitted starts at the beginning. */
  readonly pageToken?: string;
}

/** One page of results. */
export interface Page<T> {
  readonly items: readonly T[];
  /** Present only when more objects may follow; pass it back as `pageToken`. */
  readonly nextPageToken?: string;
}

const PREFIX = "p1.";

/**
 * Encodes a cursor (the internal row position of the last object returned)
 * with the list's name, so a token from one list is refused by another.
 */
export function encodePageToken(list: string, cursor: number): string {
  return PREFIX + Buffer.from(`${list}:${cursor}`, "utf8").toString("base64url");
}

/**
 * Decodes a page token made by {@link encodePageToken} for the same list.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when it is not one.
 */
export function decodePageToken(list: string, token: string): number {
  const bad = (): SigilError => new SigilError("ERR_INVALID_ARGUMENT", `datastore: invalid page token for ${list}`);
  if (typeof token !== "string" || !token.startsWith(PREFIX) || token.length > 200) throw bad();
  const text = Buffer.from(token.slice(PREFIX.length), "base64url").toString("utf8");
  const m = /^([a-z_]+):(0|[1-9][0-9]{0,15})$/.exec(text);
  if (!m || m[1] !== list) throw bad();
  const cursor = Number(m[2]);
  if (!Number.isSafeInteger(cursor)) throw bad();
  return cursor;
}

/**
 * Checks a page size.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` when not an integer in 1 … {@link MAX_PAGE_SIZE}.
 */
export function checkPageSize(size: number | undefined): number | undefined {
  if (size === undefined) return undefined;
  if (!Number.isInteger(size) || size < 1 || size > MAX_PAGE_SIZE) {
    throw new SigilError("ERR_INVALID_ARGUMENT", `datastore: page size must be an integer from 1 to ${MAX_PAGE_SIZE}, got ${String(size)}`);
  }
  return size;
}
