/**
 * Load for fault tests: entries created in a loop through each server's admin
 * API, each create followed by a sync of an agent through that server, until
 * stopped. Only entries whose creation was acknowledged are recorded: those
 * are the ones a fault must not lose.
 */
import type { UnaryClient } from "../../../common/rpc/unary-client.js";
import type { EntryAdmin } from "../../../proto/gen/sigil/admin/v1/admin_pb.js";
import type { Entry } from "../../../proto/gen/sigil/types/v1/types_pb.js";
import type { Attested } from "./test-agent.js";

/** An admin client of the entry API. */
export type EntryAdminClient = UnaryClient<(typeof EntryAdmin)["method"]>;

/** A running {@link startEntryLoad}. */
export interface EntryLoad {
  /** IDs of the entries whose creation was acknowledged so far. */
  readonly acknowledged: ReadonlySet<string>;
  /** How many rounds failed (a create or a sync refused or unanswered). */
  failures(): number;
  /** Stops the loops and waits for the rounds under way. */
  stop(): Promise<void>;
}

/**
 * Starts one loop per path: two entries created through `entries` (named
 * `<name>-<round>-<n>`, made by `entry`), then a full sync of `agent`; a
 * failed round is counted and the loop goes on 50 ms later.
 */
export function startEntryLoad(paths: readonly { name: string; entries: EntryAdminClient; agent: Attested }[], entry: (name: string) => Entry): EntryLoad {
  const acknowledged = new Set<string>();
  let failures = 0;
  let stopped = false;
  const loop = async ({ name, entries, agent }: (typeof paths)[number]): Promise<void> => {
    for (let i = 0; !stopped; i++) {
      try {
        const res = await entries.batchCreateEntry({ entries: [entry(`${name}-${i}-0`), entry(`${name}-${i}-1`)] });
        for (const r of res.results) if (r.status?.code === 0 && r.entry) acknowledged.add(r.entry.id);
        await agent.api.syncAuthorized({});
      } catch {
        failures++;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  };
  const loops = paths.map(loop);
  return {
    acknowledged,
    failures: () => failures,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
    },
  };
}

/** Every stored entry, read page by page through `entries`. */
export async function listAllEntries(entries: EntryAdminClient): Promise<Entry[]> {
  const all: Entry[] = [];
  let pageToken = "";
  do {
    const page = await entries.listEntries({ pageSize: 1000, pageToken });
    all.push(...page.entries);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return all;
}
