/**
 * Where the registration controller reads and writes its entries. Inside the
 * server ({@link datastoreEntryStore}) it validates each entry exactly as the
 * admin API does (`validateWireEntry`) and writes to the datastore; as its own
 * process ({@link adminApiEntryStore}) it calls the server's admin API over
 * the admin socket, which runs the same validation. Either way only entries
 * whose ID is the controller's prefix and a digest are listed.
 */
import { create } from "@bufbuild/protobuf";
import { credentials } from "@grpc/grpc-js";
import { createUnaryClient } from "../../common/rpc/unary-client.js";
import { EntryAdmin } from "../../proto/gen/sigil/admin/v1/admin_pb.js";
import { EntrySchema, type Entry as WireEntry } from "../../proto/gen/sigil/types/v1/types_pb.js";
import { SigilError, isSigilError, type ErrorCode } from "../../spiffe/errors.js";
import type { TrustDomain } from "../../spiffe/id.js";
import { ENTRY_FIELDS, type Datastore } from "../datastore/index.js";
import { validateWireEntry, type ParentResolver } from "../registration/entry-validation.js";
import { isOwnedEntryId, type RenderedEntry } from "./cluster-spiffe-id.js";

/** What the controller compares of an existing entry. */
export interface StoredEntry {
  readonly id: string;
  readonly spiffeId: string;
  readonly parentId: string;
  readonly selectors: ReadonlyArray<{ readonly type: string; readonly value: string }>;
  readonly x509SvidTtl: number;
  readonly jwtSvidTtl: number;
  readonly dnsNames: readonly string[];
  readonly federatesWith: readonly string[];
  readonly admin: boolean;
  readonly downstream: boolean;
  readonly hint: string;
  /** Whether the entry has an expiry (the controller's never do). */
  readonly expires: boolean;
}

/** One item's outcome of {@link ControllerEntryStore.create}. */
export type CreateResult = { readonly ok: true } | { readonly ok: false; readonly error: unknown };

/** The controller's access to entries. */
export interface ControllerEntryStore {
  /** Entries whose ID is `prefix` and a digest of the controller's ({@link isOwnedEntryId}), by ID. */
  listOwned(prefix: string): Promise<Map<string, StoredEntry>>;
  /** Creates entries (IDs given); results in input order. */
  create(entries: readonly RenderedEntry[]): Promise<CreateResult[]>;
  /** Replaces every field of the entry with this ID. */
  update(entry: RenderedEntry): Promise<void>;
  /** Deletes the entry; one already gone is no error. */
  delete(id: string): Promise<void>;
  close?(): void;
}

/** Entries per create call (the admin API's batch limit). */
const BATCH = 1000;

function toWire(d: RenderedEntry): WireEntry {
  return create(EntrySchema, {
    id: d.id,
    spiffeId: d.spiffeId,
    parentId: d.parentId,
    selectors: d.selectors.map((x) => ({ type: x.type, value: x.value })),
    x509SvidTtl: d.x509SvidTtl,
    jwtSvidTtl: d.jwtSvidTtl,
    dnsNames: [...d.dnsNames],
    federatesWith: [...d.federatesWith],
    admin: d.admin,
    downstream: d.downstream,
    hint: d.hint,
  });
}

/** Dependencies of {@link datastoreEntryStore}. */
export interface DatastoreEntryStoreDeps {
  readonly datastore: () => Datastore;
  readonly trustDomain: TrustDomain;
  readonly serverId: string;
  /** The parent resolver entries are validated with (it must accept not-yet-attested psat agent IDs). */
  readonly parents: () => ParentResolver;
}

/** The in-server store: admin-API validation, then the datastore. */
export function datastoreEntryStore(deps: DatastoreEntryStoreDeps): ControllerEntryStore {
  const validate = (d: RenderedEntry) => validateWireEntry(toWire(d), `entry ${d.id}`, { trustDomain: deps.trustDomain, serverId: deps.serverId, parents: deps.parents() });
  return {
    async listOwned(prefix) {
      const owned = new Map<string, StoredEntry>();
      let pageToken: string | undefined;
      do {
        const page = await deps.datastore().listEntries({ pageSize: 5000, ...(pageToken ? { pageToken } : {}) });
        for (const e of page.items) if (isOwnedEntryId(prefix, e.id)) owned.set(e.id, { ...e, expires: e.expiresAt !== null });
        pageToken = page.nextPageToken;
      } while (pageToken);
      return owned;
    },
    async create(entries) {
      const results: CreateResult[] = new Array(entries.length);
      for (let i = 0; i < entries.length; i += BATCH) {
        const valid: Array<{ k: number; input: Awaited<ReturnType<typeof validate>> }> = [];
        for (let k = i; k < Math.min(entries.length, i + BATCH); k++) {
          try {
            valid.push({ k, input: await validate(entries[k] as RenderedEntry) });
          } catch (error) {
            results[k] = { ok: false, error };
          }
        }
        const created = await deps.datastore().createEntries(valid.map((v) => v.input));
        created.forEach((r, j) => {
          results[(valid[j] as { k: number }).k] = r.ok ? { ok: true } : { ok: false, error: r.error };
        });
      }
      return results;
    },
    async update(entry) {
      const { id: _id, ...changes } = await validate(entry);
      await deps.datastore().updateEntry(entry.id, { ...changes, expiresAt: null }, ENTRY_FIELDS);
    },
    async delete(id) {
      try {
        await deps.datastore().deleteEntry(id);
      } catch (e) {
        if (!isSigilError(e, "ERR_NOT_FOUND")) throw e;
      }
    },
  };
}

/** gRPC item status codes and the error each becomes; anything else is the server failing (ERR_UNAVAILABLE). */
const GRPC_CODES: Readonly<Record<number, ErrorCode>> = {
  3: "ERR_INVALID_ARGUMENT",
  5: "ERR_NOT_FOUND",
  6: "ERR_ALREADY_EXISTS",
  7: "ERR_PERMISSION_DENIED",
  9: "ERR_FAILED_PRECONDITION",
  13: "ERR_INTERNAL",
};

function statusError(what: string, status: { code: number; message: string } | undefined): SigilError | undefined {
  if (status === undefined || status.code === 0) return undefined;
  return new SigilError(GRPC_CODES[status.code] ?? "ERR_UNAVAILABLE", `${what}: ${status.message}`);
}

/**
 * Whether an error of {@link ControllerEntryStore.update} is the server
 * refusing the entry as rendered (invalid, unknown parent, a duplicate), as
 * opposed to failing to answer: a refused entry is deleted rather than kept
 * as it was.
 */
export function isEntryRefusal(err: unknown): boolean {
  return isSigilError(err, "ERR_INVALID_ARGUMENT") || isSigilError(err, "ERR_NOT_FOUND") || isSigilError(err, "ERR_ALREADY_EXISTS") || isSigilError(err, "ERR_SPIFFE_ID_INVALID");
}

/** The store of a controller running as its own process: the server's admin API on its Unix socket. */
export function adminApiEntryStore(socketPath: string): ControllerEntryStore {
  const client = createUnaryClient(EntryAdmin, `unix:${socketPath}`, credentials.createInsecure());
  return {
    async listOwned(prefix) {
      const owned = new Map<string, StoredEntry>();
      let pageToken = "";
      do {
        const res = await client.listEntries({ pageSize: 1000, pageToken });
        for (const e of res.entries) {
          if (!isOwnedEntryId(prefix, e.id)) continue;
          owned.set(e.id, { ...e, x509SvidTtl: e.x509SvidTtl, jwtSvidTtl: e.jwtSvidTtl, expires: e.expiresAt !== 0n });
        }
        pageToken = res.nextPageToken;
      } while (pageToken);
      return owned;
    },
    async create(entries) {
      const results: CreateResult[] = [];
      for (let i = 0; i < entries.length; i += BATCH) {
        const res = await client.batchCreateEntry({ entries: entries.slice(i, i + BATCH).map(toWire) });
        for (const r of res.results) {
          const error = statusError("BatchCreateEntry", r.status);
          results.push(error ? { ok: false, error } : { ok: true });
        }
      }
      return results;
    },
    async update(entry) {
      // An empty mask replaces every field (expires_at 0: never).
      const res = await client.batchUpdateEntry({ entries: [toWire(entry)], mask: [] });
      const error = statusError("BatchUpdateEntry", res.results[0]?.status);
      if (error) throw error;
    },
    async delete(id) {
      const res = await client.batchDeleteEntry({ ids: [id] });
      const error = statusError("BatchDeleteEntry", res.results[0]?.status);
      if (error && !isSigilError(error, "ERR_NOT_FOUND")) throw error;
    },
    close: () => client.close(),
  };
}
