/**
 * Which change-event IDs a follower has seen. On PostgreSQL and MySQL an
 * event ID is taken when its transaction inserts the row but becomes visible
 * only when that transaction commits, so a reader can see event 12 before
 * event 11 (or never see 11: its transaction rolled back, or was retried and
 * took a new ID). IDs below the highest one seen and not seen yet are
 * **gaps**: the reader keeps reading them again until they show up or a
 * timeout passes (then the ID is taken as never committed).
 *
 * Pure bookkeeping with an injected time, so it is tested with tables.
 */

/** Gaps tracked at most; past this the oldest are given up at once (a huge jump in IDs). */
export const MAX_TRACKED_GAPS = 10_000;

/** What {@link EventGapTracker.expire} gave up. */
export interface ExpiredGaps {
  /** IDs not seen within the timeout (or pushed out past {@link MAX_TRACKED_GAPS}). */
  readonly ids: readonly number[];
}

/** See the module comment. */
export class EventGapTracker {
  #high: number;
  /** Gap ID → when it was first noticed missing (ms). Insertion order is ID order. */
  readonly #gaps = new Map<number, number>();
  readonly #timeoutMs: number;
  #overflow: number[] = [];

  /**
   * @param start every ID up to this one is taken as seen (the feed's
   *   starting point: the highest event ID when the follower loaded).
   * @param timeoutMs how long a gap is read again before it is given up.
   */
  constructor(start: number, timeoutMs: number) {
    if (!Number.isSafeInteger(start) || start < 0) throw new RangeError("start must be a non-negative integer");
    if (!Number.isFinite(timeoutMs) || timeoutMs < 0) throw new RangeError("timeoutMs must be a non-negative number");
    this.#high = start;
    this.#timeoutMs = timeoutMs;
  }

  /** The highest ID seen. */
  get high(): number {
    return this.#high;
  }

  /** The open gaps, lowest first. */
  gaps(): number[] {
    return [...this.#gaps.keys()].sort((a, b) => a - b);
  }

  /**
   * Where the next read starts: events with an ID above this. Below the
   * lowest gap while gaps are open, so one range read finds both the late
   * events and the new ones.
   */
  readAfter(): number {
    let low = this.#high;
    for (const id of this.#gaps.keys()) if (id - 1 < low) low = id - 1;
    return low;
  }

  /**
   * Records that event `id` was read at `nowMs`. True when it is new (above
   * every ID seen, or filling a gap): the caller delivers it; false for an
   * ID already seen or given up.
   */
  accept(id: number, nowMs: number): boolean {
    if (!Number.isSafeInteger(id) || id <= 0) return false;
    if (id > this.#high) {
      // A jump past the cap: the IDs below the newest MAX_TRACKED_GAPS are not tracked at all.
      for (let g = Math.max(this.#high + 1, id - MAX_TRACKED_GAPS); g < id; g++) this.#gaps.set(g, nowMs);
      this.#high = id;
      this.#trim();
      return true;
    }
    return this.#gaps.delete(id);
  }

  /** Gives up the gaps open longer than the timeout (and any pushed out by the cap). */
  expire(nowMs: number): ExpiredGaps {
    const ids = this.#overflow;
    this.#overflow = [];
    for (const [id, since] of this.#gaps) {
      if (nowMs - since >= this.#timeoutMs) {
        this.#gaps.delete(id);
        ids.push(id);
      }
    }
    return { ids };
  }

  /** Keeps at most {@link MAX_TRACKED_GAPS}: the oldest beyond that are given up at the next expire. */
  #trim(): void {
    if (this.#gaps.size <= MAX_TRACKED_GAPS) return;
    const drop = this.gaps().slice(0, this.#gaps.size - MAX_TRACKED_GAPS);
    for (const id of drop) {
      this.#gaps.delete(id);
      this.#overflow.push(id);
    }
  }
}
