/**
 * CA rotation as a service (`ca-rotation`): one {@link CaManager.rotate} step
 * every 10 seconds (prepare, activate, prune authorities; see rotation.ts),
 * and sooner when the manager's next due instant comes first
 * ({@link CaManager.msUntilNextRotation}), so a successor is activated when it is
 * due rather than up to a tick later,
 * then `afterRotation` (the server re-issues its own SVID when the roots
 * changed or at half life). Steps never overlap; stop waits for the one
 * under way. A failed step (the database restarting, say) is reported
 * through `onFailure`, and the first successful step after it through
 * `onRecovery`, so a transient failure does not mark the server unhealthy
 * for good.
 */
import type { Logger } from "../../common/log.js";
import type { Service } from "../../common/service.js";
import type { CaManager } from "./manager.js";

/** How often the CA rotator runs at the latest. */
export const ROTATE_INTERVAL_MS = 10_000;

/**
 * Slack after a due instant, and so the shortest delay between steps: timers
 * run on the monotonic clock while due instants are wall-clock (or a test's
 * manual clock, which may never reach them).
 */
const DUE_SLACK_MS = 250;

/** Dependencies of the {@link CaRotationJob}. */
export interface CaRotationJobDeps {
  /** The CA service, started before this one. */
  readonly ca: { readonly manager: CaManager };
  /** Runs after each successful step. */
  readonly afterRotation: () => void;
  /** Runs after a failed step (which is logged as `ca: rotation failed`). */
  readonly onFailure: (err: unknown) => void;
  /** Runs after the first successful step that follows a failed one. */
  readonly onRecovery?: () => void;
  readonly log: Logger;
}

/** The `ca-rotation` service; see the module comment. */
export class CaRotationJob implements Service {
  readonly name = "ca-rotation";
  readonly #d: CaRotationJobDeps;
  #timer: NodeJS.Timeout | undefined;
  #rotating: Promise<void> = Promise.resolve();
  #failing = false;
  #stopped = false;
  #soon = false;

  constructor(deps: CaRotationJobDeps) {
    this.#d = deps;
  }

  start(): void {
    this.#schedule();
  }

  /** The delay to the next step: the next due instant, at most {@link ROTATE_INTERVAL_MS}. */
  #delayMs(): number {
    const due = this.#d.ca.manager.msUntilNextRotation();
    return due === undefined ? ROTATE_INTERVAL_MS : Math.min(ROTATE_INTERVAL_MS, due + DUE_SLACK_MS);
  }

  #schedule(): void {
    if (this.#stopped) return;
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      void this.rotateNow().then(() => this.#schedule());
    }, this.#delayMs());
  }

  /**
   * Runs a step as soon as the one under way (if any) is done; calls made
   * meanwhile share it. Not while steps are failing (a key manager or upstream
   * authority down): the timer retries then, not every signing request.
   */
  runSoon(): void {
    if (this.#soon || this.#stopped || this.#failing) return;
    this.#soon = true;
    void this.rotateNow().finally(() => {
      this.#soon = false;
    });
  }

  /** Runs one rotation step now, after any step under way; never rejects. */
  rotateNow(): Promise<void> {
    const ca = this.#d.ca.manager;
    this.#rotating = this.#rotating
      .then(() => ca.rotate())
      .then(() => {
        this.#d.afterRotation();
        if (this.#failing) {
          this.#failing = false;
          this.#d.log.info("ca: rotation succeeded again");
          this.#d.onRecovery?.();
        }
      })
      .catch((err: unknown) => {
        this.#failing = true;
        this.#d.log.error({ err }, "ca: rotation failed");
        this.#d.onFailure(err);
      })
      .then(() => {
        // A step run out of turn (an admin command, runSoon) may move the next due instant.
        if (this.#timer !== undefined) this.#schedule();
      });
    return this.#rotating;
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#rotating;
  }
}
