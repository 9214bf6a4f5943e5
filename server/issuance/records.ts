/**
 * Issuance records: what the issuance log keeps of each credential the server
 * signs for someone else. Every signing path (the agent API's entry and agent
 * SVIDs, the admin API's mints) builds its records here, so a record says the
 * same things whoever asked.
 */
import { createHash } from "node:crypto";
import { formatSelector } from "../../common/selector.js";
import { canonicalSerialHex } from "../../spiffe/x509/serial.js";
import type { IssuedJwt, IssuedX509 } from "../ca/manager.js";
import type { IssuanceInput, RegistrationEntry } from "../datastore/index.js";

/** At whose request a credential was issued (one origin serves a whole batch). */
export interface IssuanceOrigin {
  /** `<kind>:<principal>`: `agent:<agent ID>`, `attestation:<node attestor>`, `admin:local`. */
  readonly requestedBy: string;
  /** The agent that asked for it (or was attested); `null` for admin mints. */
  readonly agentId: string | null;
  /** Canonical selectors to record when there is no entry (an attested node's); default none. */
  readonly selectors?: readonly string[] | undefined;
}

/** A stable identifier for a JWT-SVID in the issuance log: the first 16 bytes of its SHA-256, hex. */
export function jwtSerial(token: string): string {
  return canonicalSerialHex(createHash("sha256").update(token).digest("hex").slice(0, 32));
}

// Canonical selector strings of entry records, formatted once per record (an entry is signed for many times).
const selectorStrings = new WeakMap<RegistrationEntry, string[]>();
function entrySelectors(e: RegistrationEntry): string[] {
  let s = selectorStrings.get(e);
  if (!s) selectorStrings.set(e, (s = e.selectors.map(formatSelector)));
  return s;
}

function selectorsOf(origin: IssuanceOrigin, entry: RegistrationEntry | undefined): readonly string[] {
  return entry ? entrySelectors(entry) : (origin.selectors ?? []);
}

/**
 * The issuance-log record of an X509-SVID (`x509-svid`) or an agent's own SVID
 * (`agent-svid`), issued for `entry` when there is one (its ID and selectors are recorded).
 */
export function x509IssuanceRecord(kind: "x509-svid" | "agent-svid", spiffeId: string, issued: IssuedX509, origin: IssuanceOrigin, entry: RegistrationEntry | undefined, issuedAt: Date): IssuanceInput {
  return {
    serial: issued.serial,
    kind,
    spiffeId,
    entryId: entry?.id ?? null,
    agentId: origin.agentId,
    caKeyId: issued.caKeyId,
    notBefore: issued.notBefore,
    notAfter: issued.notAfter,
    issuedAt,
    selectors: selectorsOf(origin, entry),
    requestedBy: origin.requestedBy,
  };
}

/** The issuance-log record of a JWT-SVID, issued for `entry` when there is one. */
export function jwtIssuanceRecord(spiffeId: string, jwt: IssuedJwt, audience: readonly string[], origin: IssuanceOrigin, entry: RegistrationEntry | undefined): IssuanceInput {
  return {
    serial: jwtSerial(jwt.token),
    kind: "jwt-svid",
    spiffeId,
    entryId: entry?.id ?? null,
    agentId: origin.agentId,
    caKeyId: jwt.keyId,
    notBefore: jwt.issuedAt,
    notAfter: jwt.expiresAt,
    issuedAt: jwt.issuedAt,
    selectors: selectorsOf(origin, entry),
    requestedBy: origin.requestedBy,
    audience: [...audience],
  };
}
