/**
 * `sigil.admin.v1.EntryAdmin`: registration entry CRUD. Every entry is
 * validated against the server's context (`validateWireEntry`) before the
 * datastore sees it, so a refused item never touches the store; batch calls
 * report a status per item, in request order.
 */
import { create } from "@bufbuild/protobuf";
import { parseSelector } from "../../../common/selector.js";
import {
  BatchCreateEntryResponseSchema,
  BatchDeleteEntryResponseSchema,
  BatchUpdateEntryResponseSchema,
  CountEntriesResponseSchema,
  ListEntriesResponseSchema,
  type BatchCreateEntryRequest,
  type BatchCreateEntryResponse,
  type BatchDeleteEntryRequest,
  type BatchDeleteEntryResponse,
  type BatchUpdateEntryRequest,
  type BatchUpdateEntryResponse,
  type CountEntriesRequest,
  type CountEntriesResponse,
  type EntryAdmin,
  type EntryFilter as WireEntryFilter,
  type GetEntryRequest,
  type ListEntriesRequest,
  type ListEntriesResponse,
} from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import type { Entry as WireEntry, Status as WireStatus } from "../../../proto/gen/sigil/types/v1/types_pb.js";
import { SigilError, isSigilError } from "../../../spiffe/errors.js";
import { parseSpiffeId } from "../../../spiffe/id.js";
import type { GrpcServiceImplementation } from "../../../spiffe/grpc/service.js";
import { ENTRY_FIELDS, type EntryChanges, type EntryField, type EntryFilter, type EntryInput, type RegistrationEntry, type SetMatch } from "../../datastore/index.js";
import { validateWireEntry, type ParentResolver } from "../../registration/entry-validation.js";
import type { UnaryWrapper } from "../unary.js";
import { wireEntry, wireStatus } from "../wire.js";
import { checkBatchSize, invalidField, pageRequest, prefixError, spiffeIdField, trustDomainField, withPageToken, type AdminApiDeps } from "./common.js";

type EntryMethods = (typeof EntryAdmin)["method"];

/** Update-mask names (proto field names) and the entry field each one changes. */
export const ENTRY_MASK_FIELDS: Readonly<Record<string, EntryField>> = {
  spiffe_id: "spiffeId",
  parent_id: "parentId",
  selectors: "selectors",
  x509_svid_ttl: "x509SvidTtl",
  jwt_svid_ttl: "jwtSvidTtl",
  dns_names: "dnsNames",
  federates_with: "federatesWith",
  admin: "admin",
  downstream: "downstream",
  hint: "hint",
  expires_at: "expiresAt",
};

const SET_MATCHES: readonly SetMatch[] = ["exact", "subset", "superset", "any"];

/**
 * Converts a BatchUpdateEntry mask to entry fields; empty means every field.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming an unknown mask entry.
 */
export function parseEntryMask(mask: readonly string[]): EntryField[] {
  if (mask.length === 0) return [...ENTRY_FIELDS];
  const out = new Set<EntryField>();
  mask.forEach((name, i) => {
    const f = Object.hasOwn(ENTRY_MASK_FIELDS, name) ? ENTRY_MASK_FIELDS[name] : undefined;
    if (f === undefined) throw invalidField(`mask[${i}]`, `unknown field ${JSON.stringify(name)} (expected ${Object.keys(ENTRY_MASK_FIELDS).join(", ")})`);
    out.add(f);
  });
  return [...out];
}

/**
 * Converts a wire entry filter to the datastore's. `selector_match` defaults to `exact`.
 *
 * @throws SigilError `ERR_INVALID_ARGUMENT` naming the filter field.
 */
export function parseEntryFilter(f: WireEntryFilter | undefined): EntryFilter {
  if (f === undefined) return {};
  const canonicalId = (field: string, v: string): string | undefined => (v ? spiffeIdField(`filter.${field}`, v).toString() : undefined);
  const spiffeId = canonicalId("by_spiffe_id", f.bySpiffeId);
  const parentId = canonicalId("by_parent_id", f.byParentId);
  const match = (f.selectorMatch || "exact") as SetMatch;
  if (!SET_MATCHES.includes(match)) throw invalidField("filter.selector_match", `must be exact, subset, superset or any, got ${JSON.stringify(f.selectorMatch)}`);
  const selectors = f.bySelectors.map((s, i) => {
    try {
      return parseSelector(`${s.type}:${s.value}`);
    } catch (e) {
      throw invalidField(`filter.by_selectors[${i}]`, isSigilError(e) ? e.message : String(e), e);
    }
  });
  const federatesWith = f.byFederatesWith ? trustDomainField("filter.by_federates_with", f.byFederatesWith).name : undefined;
  if (!["", "true", "false"].includes(f.byDownstream)) throw invalidField("filter.by_downstream", `must be "true", "false" or empty, got ${JSON.stringify(f.byDownstream)}`);
  return {
    ...(spiffeId === undefined ? {} : { spiffeId }),
    ...(parentId === undefined ? {} : { parentId }),
    ...(selectors.length ? { selectors: { selectors, match } } : {}),
    ...(federatesWith === undefined ? {} : { federatesWith: { trustDomains: [federatesWith], match: "superset" as const } }),
    ...(f.byHint ? { hint: f.byHint } : {}),
    ...(f.byDownstream ? { downstream: f.byDownstream === "true" } : {}),
  };
}

function copyField<K extends EntryField>(to: WireEntry, from: WireEntry, k: K): void {
  to[k] = from[k];
}

/** The canonical form of a SPIFFE ID string, or undefined when it does not parse. */
function canonical(id: string): string | undefined {
  try {
    return parseSpiffeId(id).toString();
  } catch {
    return undefined;
  }
}

/** Builds the EntryAdmin service implementation. */
export function createEntryAdmin(deps: AdminApiDeps, parents: ParentResolver, unary: UnaryWrapper): GrpcServiceImplementation<EntryMethods> {
  const ctx = { trustDomain: deps.trustDomain, serverId: deps.serverId, parents };

  function itemStatus(e: unknown, path: string, method: string): WireStatus {
    if (!isSigilError(e)) deps.log.error({ err: e, item: path }, `admin api: ${method} item failed`);
    return wireStatus(prefixError(e, path));
  }

  /**
   * Validates and creates a batch. An item whose parent is another item of the
   * batch (a node alias and its workloads in one file) is validated again once
   * that item exists, so batch order does not matter.
   */
  async function createBatch(entries: readonly WireEntry[]): Promise<Array<{ status: WireStatus; entry?: WireEntry }>> {
    const results: Array<{ status: WireStatus; entry?: WireEntry }> = new Array(entries.length);
    const batchIds = new Set<string>();
    for (const e of entries) {
      const id = canonical(e.spiffeId);
      if (id !== undefined) batchIds.add(id);
    }
    /** Items waiting for a parent created by this batch: parent ID → item indexes and their NOT_FOUND error. */
    const waiting = new Map<string, Array<{ i: number; error: unknown }>>();
    let toValidate = entries.map((_, i) => i);
    while (toValidate.length > 0) {
      const valid: Array<{ i: number; input: EntryInput }> = [];
      for (const i of toValidate) {
        const e = entries[i] as WireEntry;
        try {
          valid.push({ i, input: await validateWireEntry(e, `entries[${i}]`, ctx) });
        } catch (err) {
          const parent = canonical(e.parentId);
          if (isSigilError(err, "ERR_NOT_FOUND") && parent !== undefined && batchIds.has(parent)) {
            const list = waiting.get(parent) ?? [];
            list.push({ i, error: err });
            waiting.set(parent, list);
          } else {
            results[i] = { status: itemStatus(err, `entries[${i}]`, "BatchCreateEntry") };
          }
        }
      }
      toValidate = [];
      if (valid.length === 0) break;
      const created = await deps.datastore.createEntries(valid.map((v) => v.input));
      created.forEach((r, k) => {
        const { i } = valid[k] as { i: number };
        if (!r.ok) {
          results[i] = { status: itemStatus(r.error, `entries[${i}]`, "BatchCreateEntry") };
          return;
        }
        results[i] = { status: wireStatus(), entry: wireEntry(r.value) };
        const children = waiting.get(r.value.spiffeId);
        if (children) {
          waiting.delete(r.value.spiffeId);
          toValidate.push(...children.map((c) => c.i));
        }
      });
      toValidate.sort((a, b) => a - b);
    }
    for (const list of waiting.values()) for (const { i, error } of list) results[i] = { status: itemStatus(error, `entries[${i}]`, "BatchCreateEntry") };
    return results;
  }

  async function updateOne(req: WireEntry, i: number, fields: readonly EntryField[]): Promise<RegistrationEntry> {
    const path = `entries[${i}]`;
    if (!req.id) throw invalidField(`${path}.id`, "is required");
    const existing = await deps.datastore.getEntry(req.id);
    if (!existing) throw new SigilError("ERR_NOT_FOUND", `${path}.id: entry ${JSON.stringify(req.id)} not found`);
    const merged = wireEntry(existing);
    for (const f of fields) copyField(merged, req, f);
    // An unchanged parent stays acceptable even if its agent has gone since.
    const input = await validateWireEntry(merged, path, {
      ...ctx,
      parents: { parentExists: async (id) => id === existing.parentId || parents.parentExists(id) },
    });
    const changes: Record<string, unknown> = {};
    for (const f of fields) changes[f] = input[f];
    return deps.datastore.updateEntry(existing.id, changes as EntryChanges, fields);
  }

  return {
    batchCreateEntry: unary<BatchCreateEntryRequest, BatchCreateEntryResponse>("BatchCreateEntry", async (req, _call, audit) => {
      audit.details.requested = req.entries.length;
      checkBatchSize("entries", req.entries.length);
      const results = await createBatch(req.entries);
      const ids = results.flatMap((r) => (r.entry ? [r.entry.id] : []));
      audit.details.created = ids.length;
      audit.details.entry_ids = ids;
      return { res: create(BatchCreateEntryResponseSchema, { results }) };
    }),

    batchUpdateEntry: unary<BatchUpdateEntryRequest, BatchUpdateEntryResponse>("BatchUpdateEntry", async (req, _call, audit) => {
      audit.details.requested = req.entries.length;
      audit.details.mask = [...req.mask];
      checkBatchSize("entries", req.entries.length);
      const fields = parseEntryMask(req.mask);
      const results = [];
      for (const [i, e] of req.entries.entries()) {
        try {
          results.push({ status: wireStatus(), entry: wireEntry(await updateOne(e, i, fields)) });
        } catch (err) {
          results.push({ status: itemStatus(err, `entries[${i}]`, "BatchUpdateEntry") });
        }
      }
      const ids = results.flatMap((r) => (r.entry ? [r.entry.id] : []));
      audit.details.updated = ids.length;
      audit.details.entry_ids = ids;
      return { res: create(BatchUpdateEntryResponseSchema, { results }) };
    }),

    batchDeleteEntry: unary<BatchDeleteEntryRequest, BatchDeleteEntryResponse>("BatchDeleteEntry", async (req, _call, audit) => {
      audit.details.requested = req.ids.length;
      checkBatchSize("ids", req.ids.length);
      const results = [];
      const deleted: string[] = [];
      for (const [i, id] of req.ids.entries()) {
        try {
          if (!id) throw invalidField(`ids[${i}]`, "is empty");
          await deps.datastore.deleteEntry(id).catch((e: unknown) => {
            throw isSigilError(e, "ERR_NOT_FOUND") ? new SigilError("ERR_NOT_FOUND", `ids[${i}]: entry ${JSON.stringify(id)} not found`, { cause: e }) : e;
          });
          deleted.push(id);
          results.push({ status: wireStatus(), id });
        } catch (err) {
          results.push({ status: itemStatus(err, `ids[${i}]`, "BatchDeleteEntry"), id });
        }
      }
      audit.details.deleted = deleted.length;
      audit.details.entry_ids = deleted;
      return { res: create(BatchDeleteEntryResponseSchema, { results }) };
    }),

    getEntry: unary<GetEntryRequest, WireEntry>("GetEntry", async (req, _call, audit) => {
      audit.details.entry_id = req.id;
      if (!req.id) throw invalidField("id", "is required");
      const e = await deps.datastore.getEntry(req.id);
      if (!e) throw new SigilError("ERR_NOT_FOUND", `id: entry ${JSON.stringify(req.id)} not found`);
      return { res: wireEntry(e) };
    }),

    listEntries: unary<ListEntriesRequest, ListEntriesResponse>("ListEntries", async (req, _call, audit) => {
      const filter = parseEntryFilter(req.filter);
      const page = pageRequest(req.pageSize, req.pageToken);
      const result = await withPageToken(req.pageToken, () => deps.datastore.listEntries({ filter, ...page }));
      audit.details.returned = result.items.length;
      return { res: create(ListEntriesResponseSchema, { entries: result.items.map(wireEntry), nextPageToken: result.nextPageToken ?? "" }) };
    }),

    countEntries: unary<CountEntriesRequest, CountEntriesResponse>("CountEntries", async (req) => {
      const count = await deps.datastore.countEntries(parseEntryFilter(req.filter));
      return { res: create(CountEntriesResponseSchema, { count: BigInt(count) }) };
    }),
  };
}
