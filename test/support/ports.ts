/**
 * Ports for tests that need a peer which is not there.
 */
import { createServer } from "node:net";

/** A loopback port nothing listens on (bound once, then released): connecting to it is refused. */
export async function closedLoopbackPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((resolve, reject) => {
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => resolve());
  });
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}
