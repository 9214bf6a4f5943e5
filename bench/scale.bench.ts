/**
 * `npm run bench`'s small configuration of the load harness (bench/scale/run.ts):
 * PostgreSQL, one server, 50 then 100 simulated agents over 1,000 entries,
 * 10 s windows, churn 5/s, a signing burst and a cold start over 10,000
 * entries (about 5 minutes: each stage first waits out the change feed's 60 s
 * gap timeout, see bench/scale/run.ts). The full-size runs and their results are in
 * docs/performance.md; `SIGIL_BENCH_SCALE_ARGS` replaces the arguments.
 * Skipped (with a line saying so) when PostgreSQL is not reachable.
 */
import pg from "pg";
import { TEST_DATABASE_URLS } from "../test/support/datastore.js";
import { parseScaleArgs, runScale } from "./scale/run.js";

const args = process.env.SIGIL_BENCH_SCALE_ARGS?.split(" ").filter(Boolean) ?? ["--db", "postgres", "--servers", "1", "--agents", "50,100", "--entries", "1000", "--churn", "5", "--duration", "10s", "--cold-start", "10000"];
const opts = parseScaleArgs(args);
const probe = opts.db === "postgres" ? new pg.Client({ connectionString: `${TEST_DATABASE_URLS.postgres}/postgres`, connectionTimeoutMillis: 3000 }) : undefined;
let reachable = true;
try {
  await probe?.connect();
} catch (e) {
  reachable = false;
  console.log(`SKIP scale: PostgreSQL at ${TEST_DATABASE_URLS.postgres} unreachable (${e instanceof Error ? e.message : String(e)})`);
} finally {
  await probe?.end().catch(() => undefined);
}
if (reachable && !(await runScale(opts))) process.exitCode = 1;
