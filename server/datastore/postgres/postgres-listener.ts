/**
 * The PostgreSQL side of the cross-server change feed: one dedicated
 * connection (outside the pool) that `LISTEN`s on {@link CHANGE_EVENTS_CHANNEL};
 * every writing transaction sends `pg_notify` with its last event ID, which
 * PostgreSQL delivers at commit. A lost connection is opened again with
 * backoff; the feed's fallback poll covers the time in between, and a wake
 * after reconnecting catches up at once.
 */
import pg from "pg";

/** The NOTIFY channel of change events. */
export const CHANGE_EVENTS_CHANNEL = "sigil_change_events";

/** Options of {@link listenForChangeEvents}: how to connect (as the pool does). */
export interface PostgresListenerOptions {
  readonly connection: pg.ClientConfig;
  /** Longest wait between reconnect attempts, in ms (default 30,000). */
  readonly maxBackoffMs?: number;
}

/**
 * Listens for change notifications, calling `wake` with the event ID of each
 * (and with `undefined` after a reconnect). Resolves once the first `LISTEN`
 * succeeded; rejects when the first connection fails. Resolves to the
 * function that stops listening.
 */
export async function listenForChangeEvents(options: PostgresListenerOptions, wake: (eventId: number | undefined) => void): Promise<() => Promise<void>> {
  let stopped = false;
  let client: pg.Client | undefined;
  let timer: NodeJS.Timeout | undefined;
  let backoff = 500;
  const maxBackoff = options.maxBackoffMs ?? 30_000;

  const connect = async (): Promise<void> => {
    const c = new pg.Client({ ...options.connection, application_name: "sigil-server-feed" });
    c.on("notification", (msg) => {
      if (msg.channel !== CHANGE_EVENTS_CHANNEL) return;
      const id = Number(msg.payload);
      wake(Number.isSafeInteger(id) && id > 0 ? id : undefined);
    });
    // A lost connection emits "error" and then "end"; reconnect once, on "end".
    c.on("error", () => undefined);
    c.on("end", () => {
      if (client !== c || stopped) return;
      client = undefined;
      retry();
    });
    try {
      await c.connect();
      await c.query(`LISTEN ${CHANGE_EVENTS_CHANNEL}`);
    } catch (e) {
      await c.end().catch(() => undefined);
      throw e;
    }
    if (stopped) {
      await c.end().catch(() => undefined);
      return;
    }
    client = c;
    backoff = 500;
  };

  const retry = (): void => {
    if (stopped) return;
    timer = setTimeout(() => {
      connect().then(
        () => wake(undefined),
        () => {
          backoff = Math.min(maxBackoff, backoff * 2);
          retry();
        },
      );
    }, backoff);
    timer.unref?.();
  };

  await connect();
  return async () => {
    stopped = true;
    clearTimeout(timer);
    const c = client;
    client = undefined;
    await c?.end().catch(() => undefined);
  };
}
