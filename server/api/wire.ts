/**
 * Conversions between datastore records and Sigil's API wire types.
 */
import { create } from "@bufbuild/protobuf";
import type { Selector } from "../../common/selector.js";
import {
  AgentSchema,
  BundleSchema,
  EntrySchema,
  SelectorSchema,
  StatusSchema,
  type Agent as WireAgent,
  type Bundle as WireBundle,
  type Entry as WireEntry,
  type Selector as WireSelector,
  type Status as WireStatus,
} from "../../proto/gen/sigil/types/v1/types_pb.js";
import { isSigilError } from "../../spiffe/errors.js";
import { grpcStatusForCode } from "../../common/rpc/status.js";
import type { AttestedAgent, RegistrationEntry, StoredBundle } from "../datastore/index.js";

const unix = (d: Date | null): bigint => (d ? BigInt(Math.floor(d.getTime() / 1000)) : 0n);

/** A selector on the wire. */
export function wireSelector(s: Selector): WireSelector {
  return create(SelectorSchema, { type: s.type, value: s.value });
}

/** A registration entry on the wire. */
export function wireEntry(e: RegistrationEntry): WireEntry {
  return create(EntrySchema, {
    id: e.id,
    spiffeId: e.spiffeId,
    parentId: e.parentId,
    selectors: e.selectors.map(wireSelector),
    x509SvidTtl: e.x509SvidTtl,
    jwtSvidTtl: e.jwtSvidTtl,
    dnsNames: [...e.dnsNames],
    federatesWith: [...e.federatesWith],
    admin: e.admin,
    downstream: e.downstream,
    hint: e.hint,
    expiresAt: unix(e.expiresAt),
    revision: BigInt(e.revision),
    createdAt: unix(e.createdAt),
  });
}

/** An attested agent on the wire. */
export function wireAgent(a: AttestedAgent): WireAgent {
  return create(AgentSchema, {
    spiffeId: a.spiffeId,
    attestationType: a.attestationType,
    selectors: a.selectors.map(wireSelector),
    x509SvidSerial: a.certSerial,
    x509SvidExpiresAt: unix(a.certNotAfter),
    banned: a.banned,
    createdAt: unix(a.createdAt),
    updatedAt: unix(a.updatedAt),
  });
}

/** A stored bundle on the wire. */
export function wireBundle(b: StoredBundle): WireBundle {
  return create(BundleSchema, { trustDomain: b.trustDomain, spiffeBundleJson: b.document, sequence: b.sequence });
}

/** A per-item status: OK, or the gRPC status and message of the error. */
export function wireStatus(e?: unknown): WireStatus {
  if (e === undefined) return create(StatusSchema, { code: 0, message: "OK" });
  if (isSigilError(e)) return create(StatusSchema, { code: grpcStatusForCode(e.code), message: e.message });
  return create(StatusSchema, { code: 13, message: "internal error" });
}
