/**
 * `sigil-agent api fetch jwt --write <file> [--refresh]`: a JWT-SVID kept in
 * a file for a CI job (or any program that reads a token file, such as the
 * AWS SDKs' `AWS_WEB_IDENTITY_TOKEN_FILE`). Every write is atomic
 * (`writeFileAtomic`: a reader sees the old token or the new one, never a
 * partial file), mode 0600. With `--refresh` the token is fetched again once
 * 60% of its lifetime has passed (the agent hands out a new one after half
 * its lifetime), so jobs longer than the TTL always find a valid token; a
 * failed fetch or write is retried with backoff and leaves the file as it was.
 */
import { writeFileAtomic } from "../../common/atomic-file.js";
import type { WorkloadJwtSvid } from "../../spiffe/workloadapi/jwt-context.js";

/** Fraction of a token's lifetime after which it is replaced. */
export const REFRESH_FRACTION = 0.6;
/** Shortest wait between two fetches. */
export const MIN_REFRESH_DELAY_MS = 1_000;
/** Longest wait between two attempts after failures. */
export const MAX_RETRY_DELAY_MS = 30_000;

/** The token's `iat`, or `fallback` when the token has none. */
export function issuedAtOf(svid: WorkloadJwtSvid, fallback: Date): Date {
  const iat = svid.claims["iat"];
  return typeof iat === "number" && Number.isFinite(iat) ? new Date(iat * 1000) : fallback;
}

/**
 * How long to wait before fetching a replacement for a token valid from
 * `issuedAt` to `expiresAt`: until {@link REFRESH_FRACTION} of its lifetime
 * has passed, at least {@link MIN_REFRESH_DELAY_MS}.
 */
export function refreshDelayMs(issuedAt: Date, expiresAt: Date, now: Date): number {
  const lifetime = Math.max(0, expiresAt.getTime() - issuedAt.getTime());
  const at = issuedAt.getTime() + lifetime * REFRESH_FRACTION;
  return Math.max(MIN_REFRESH_DELAY_MS, at - now.getTime());
}

/** The wait after the `failures`-th consecutive failure (1 s, 2 s, 4 s, … at most 30 s). */
export function retryDelayMs(failures: number): number {
  return Math.min(MAX_RETRY_DELAY_MS, MIN_REFRESH_DELAY_MS * 2 ** Math.max(0, failures - 1));
}

/** Writes a token to `file` atomically, mode 0600, one line. */
export function writeTokenFile(file: string, token: string): void {
  writeFileAtomic(file, `${token}\n`, 0o600, { subsystem: "api fetch jwt --write" });
}

/** Dependencies of {@link keepTokenFileFresh}. */
export interface TokenFileDeps {
  /** Fetches the JWT-SVID to write (the default one, or the chosen `--spiffe-id`). */
  readonly fetch: () => Promise<WorkloadJwtSvid>;
  /** Writes it (default {@link writeTokenFile}). */
  readonly write?: (file: string, token: string) => void;
  /** One line per write or failure (stderr in the CLI). */
  readonly report: (line: string) => void;
  readonly now?: () => Date;
  /** Stops the loop (SIGTERM/SIGINT); the promise then resolves. */
  readonly signal: AbortSignal;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = (): void => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
  });
}

/**
 * Writes the token to `file` and, until `signal` aborts, replaces it before it
 * expires. The first write happens before the returned promise can settle;
 * resolves when stopped. A fetch that returns the token already written (the
 * agent still caches it) is retried shortly without writing.
 */
export async function keepTokenFileFresh(file: string, deps: TokenFileDeps): Promise<void> {
  const now = deps.now ?? (() => new Date());
  const write = deps.write ?? writeTokenFile;
  let current: string | undefined;
  let failures = 0;
  while (!deps.signal.aborted) {
    let delay: number;
    try {
      const svid = await deps.fetch();
      if (deps.signal.aborted) break;
      if (svid.token === current) {
        delay = MIN_REFRESH_DELAY_MS;
      } else {
        write(file, svid.token);
        current = svid.token;
        deps.report(`${now().toISOString()} wrote ${file}: JWT-SVID of ${svid.spiffeId.toString()}, expires ${svid.expiresAt.toISOString()}`);
        delay = refreshDelayMs(issuedAtOf(svid, now()), svid.expiresAt, now());
      }
      failures = 0;
    } catch (e) {
      failures++;
      delay = retryDelayMs(failures);
      deps.report(`${now().toISOString()} refreshing ${file} failed (${e instanceof Error ? e.message : String(e)}); the file is unchanged; retrying in ${Math.round(delay / 1000)} s`);
    }
    await sleep(delay, deps.signal);
  }
}
