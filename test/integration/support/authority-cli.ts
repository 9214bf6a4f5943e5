/**
 * `sigil-server` CLI calls the authority tests share: any command with
 * `--output json` (failing the test on a non-zero exit), the authorities as
 * `authority list` prints them, and the active one of a kind.
 */
import { expect } from "vitest";
import type { ServerProcess } from "./server-process.js";

/** An authority as `authority list --output json` prints it. */
export interface AuthorityRow {
  readonly kind: string;
  readonly key_id: string;
  readonly status: string;
}

/** The helpers, for the server `server()` returns when they are called. */
export function authorityCli(server: () => ServerProcess | undefined): {
  cli(args: string[]): string;
  authorities(): AuthorityRow[];
  active(kind: string): AuthorityRow;
} {
  function cli(args: string[]): string {
    const srv = server();
    if (!srv) throw new Error("authority cli: the server is not running");
    const r = srv.cli([...args, "--output", "json"]);
    expect(r.status, `${args.join(" ")}: ${r.stderr}`).toBe(0);
    return r.stdout;
  }
  const authorities = (): AuthorityRow[] => {
    const doc = JSON.parse(cli(["authority", "list"])) as AuthorityRow[] | { authorities: AuthorityRow[] };
    return Array.isArray(doc) ? doc : doc.authorities;
  };
  const active = (kind: string): AuthorityRow => {
    const all = authorities();
    const row = all.find((a) => a.kind === kind && a.status === "active");
    if (!row) throw new Error(`no active ${kind} authority: ${JSON.stringify(all)}`);
    return row;
  };
  return { cli, authorities, active };
}
