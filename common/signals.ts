/**
 * Waiting for the operator's stop signal, as the `run` commands do.
 */

/** Resolves with the first of SIGINT or SIGTERM the process receives (both handlers are removed then). */
export function waitForStopSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const signals: NodeJS.Signals[] = ["SIGINT", "SIGTERM"];
    const on = (signal: NodeJS.Signals): void => {
      for (const s of signals) process.off(s, on);
      resolve(signal);
    };
    for (const s of signals) process.on(s, on);
  });
}
