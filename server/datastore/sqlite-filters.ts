/**
 * WHERE clauses for the SQL drivers' list and count queries, built from
 * validated filters with every value bound as a `?` parameter. The table being
 * filtered is aliased `t`. SQLite and the network engines (PostgreSQL, MySQL)
 * differ only in how a list of row values is written ({@link RowValues}).
 */
import type { AgentFilter } from "./agent.js";
import type { EntryFilter } from "./entry.js";
import type { SetMatch } from "./set-filter.js";
import { checkSelectors, checkSpiffeId, checkTime, checkTrustDomainName, invalid } from "./validate.js";

/** A SQL condition and its parameters, in order. */
export interface SqlCondition {
  readonly sql: string;
  readonly params: readonly unknown[];
}

/** A child table holding an owner's set members. */
interface SetTable {
  /** Child table; its `owner_row` references `parent.row_id`. */
  readonly child: string;
  readonly parent: string;
  /** Member columns, e.g. `["type", "value"]`. */
  readonly columns: readonly string[];
  /** The parent's column holding the set's size. */
  readonly countColumn: string;
}

const ENTRY_SELECTORS: SetTable = { child: "entry_selectors", parent: "registration_entries", columns: ["type", "value"], countColumn: "selector_count" };
const ENTRY_FEDERATES: SetTable = { child: "entry_federates_with", parent: "registration_entries", columns: ["trust_domain"], countColumn: "federates_with_count" };
const AGENT_SELECTORS: SetTable = { child: "agent_selectors", parent: "attested_agents", columns: ["type", "value"], countColumn: "selector_count" };

/**
 * How `(a, b) IN …` lists its rows: `values` (`IN (VALUES (?, ?), …)`,
 * SQLite, whose IN takes no list of row values) or `list` (`IN ((?, ?), …)`,
 * PostgreSQL and MySQL/MariaDB).
 */
export type RowValues = "values" | "list";

const MATCHES: readonly SetMatch[] = ["exact", "subset", "superset", "any"];

/**
 * The condition "the owner's set S relates to `members` F as `match` says",
 * driven from the child table's member index rather than a per-row scan.
 */
function setCondition(table: SetTable, members: ReadonlyArray<readonly string[]>, match: SetMatch, params: unknown[], rowValues: RowValues): string {
  const n = members.length;
  const cols = table.columns.map((c) => `c.${c}`);
  const inList =
    cols.length === 1
      ? `${cols[0] ?? ""} IN (${members.map(() => "?").join(", ")})`
      : `(${cols.join(", ")}) IN (${rowValues === "values" ? "VALUES " : ""}${members.map(() => `(${cols.map(() => "?").join(", ")})`).join(", ")})`;
  const bind = (): void => {
    for (const m of members) params.push(...m);
  };
  const count = `t.${table.countColumn}`;
  switch (match) {
    case "any":
      bind();
      return `t.row_id IN (SELECT c.owner_row FROM ${table.child} c WHERE ${inList})`;
    case "superset":
      bind();
      params.push(n);
      return `t.row_id IN (SELECT c.owner_row FROM ${table.child} c WHERE ${inList} GROUP BY c.owner_row HAVING COUNT(*) = ?)`;
    case "exact":
      params.push(n);
      bind();
      params.push(n);
      return `(${count} = ? AND t.row_id IN (SELECT c.owner_row FROM ${table.child} c WHERE ${inList} GROUP BY c.owner_row HAVING COUNT(*) = ?))`;
    case "subset":
      bind();
      // An empty set is a subset of anything.
      return `(${count} = 0 OR t.row_id IN (SELECT c.owner_row FROM ${table.child} c JOIN ${table.parent} p ON p.row_id = c.owner_row WHERE ${inList} GROUP BY c.owner_row HAVING COUNT(*) = MAX(p.${table.countColumn})))`;
  }
}

function checkMatch(what: string, match: unknown): SetMatch {
  if (!MATCHES.includes(match as SetMatch)) throw invalid(`${what} match must be one of ${MATCHES.join(", ")}`);
  return match as SetMatch;
}

function checkFilterBool(what: string, v: unknown): number {
  if (typeof v !== "boolean") throw invalid(`${what} must be a boolean`);
  return v ? 1 : 0;
}

/** The WHERE condition of no filter at all. */
export const UNFILTERED = "1 = 1";

/** The WHERE condition for an entry filter. @throws `ERR_INVALID_ARGUMENT` for an invalid filter. */
export function entryCondition(filter: EntryFilter | undefined, rowValues: RowValues = "values"): SqlCondition {
  const conds: string[] = [];
  const params: unknown[] = [];
  if (filter !== undefined) {
    if (filter.spiffeId !== undefined) {
      conds.push("t.spiffe_id = ?");
      params.push(checkSpiffeId("filter spiffeId", filter.spiffeId));
    }
    if (filter.parentId !== undefined) {
      conds.push("t.parent_id = ?");
      params.push(checkSpiffeId("filter parentId", filter.parentId));
    }
    if (filter.hint !== undefined) {
      if (typeof filter.hint !== "string") throw invalid("filter hint must be a string");
      conds.push("t.hint = ?");
      params.push(filter.hint);
    }
    if (filter.downstream !== undefined) {
      conds.push("t.downstream = ?");
      params.push(checkFilterBool("filter downstream", filter.downstream));
    }
    if (filter.selectors !== undefined) {
      const match = checkMatch("filter selectors", filter.selectors.match);
      const sels = checkSelectors("filter selectors", filter.selectors.selectors, false);
      conds.push(setCondition(ENTRY_SELECTORS, sels.map((s) => [s.type, s.value]), match, params, rowValues));
    }
    if (filter.federatesWith !== undefined) {
      const match = checkMatch("filter federatesWith", filter.federatesWith.match);
      const tds = filter.federatesWith.trustDomains;
      if (!Array.isArray(tds) || tds.length === 0) throw invalid("filter federatesWith must name at least one trust domain");
      const names = [...new Set(tds.map((td, i) => checkTrustDomainName(`filter federatesWith[${i}]`, td)))];
      conds.push(setCondition(ENTRY_FEDERATES, names.map((td) => [td]), match, params, rowValues));
    }
  }
  return { sql: conds.length === 0 ? UNFILTERED : conds.join(" AND "), params };
}

/** The WHERE condition for an agent filter. @throws `ERR_INVALID_ARGUMENT` for an invalid filter. */
export function agentCondition(filter: AgentFilter | undefined, rowValues: RowValues = "values"): SqlCondition {
  const conds: string[] = [];
  const params: unknown[] = [];
  if (filter !== undefined) {
    if (filter.attestationType !== undefined) {
      if (typeof filter.attestationType !== "string") throw invalid("filter attestationType must be a string");
      conds.push("t.attestation_type = ?");
      params.push(filter.attestationType);
    }
    if (filter.banned !== undefined) {
      conds.push("t.banned = ?");
      params.push(checkFilterBool("filter banned", filter.banned));
    }
    if (filter.canReattest !== undefined) {
      conds.push("t.can_reattest = ?");
      params.push(checkFilterBool("filter canReattest", filter.canReattest));
    }
    if (filter.expiresBefore !== undefined) {
      conds.push("t.cert_not_after < ?");
      params.push(checkTime("filter expiresBefore", filter.expiresBefore));
    }
    if (filter.selectors !== undefined) {
      const match = checkMatch("filter selectors", filter.selectors.match);
      const sels = checkSelectors("filter selectors", filter.selectors.selectors, false);
      conds.push(setCondition(AGENT_SELECTORS, sels.map((s) => [s.type, s.value]), match, params, rowValues));
    }
  }
  return { sql: conds.length === 0 ? UNFILTERED : conds.join(" AND "), params };
}
