import type { RelaySessions } from "./types.js";

interface Pending {
  rx: number;
  tx: number;
}

/**
 * Batches relayed byte counts per session into `recordRelayTraffic` calls (one store write per
 * `flushBytes` or `flushMs`, not per chunk). When the store answers false the cap has ended the
 * session and `onCapExceeded` tears its streams down. A request with no body still marks the
 * session, because relay traffic is renter activity.
 */
export class RelayMeter {
  private readonly pending = new Map<string, Pending>();
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly sessions: Pick<RelaySessions, "recordRelayTraffic">,
    private readonly onCapExceeded: (sessionId: string) => void,
    private readonly onError: (err: unknown) => void,
    private readonly flushBytes: number,
    flushMs: number,
  ) {
    this.timer = setInterval(() => this.flushAll(), flushMs);
    this.timer.unref();
  }

  /** Marks activity with no bytes (e.g. a GET). */
  touch(sessionId: string): void {
    this.entry(sessionId);
  }

  /** Adds bytes from the renter towards the session. */
  addRx(sessionId: string, bytes: number): void {
    this.entry(sessionId).rx += bytes;
    this.maybeFlush(sessionId);
  }

  /** Adds bytes from the session towards the renter. */
  addTx(sessionId: string, bytes: number): void {
    this.entry(sessionId).tx += bytes;
    this.maybeFlush(sessionId);
  }

  /** Reports everything pending now. */
  flushAll(): void {
    for (const sessionId of [...this.pending.keys()]) this.flush(sessionId);
  }

  /** Flushes and stops the timer. */
  close(): void {
    clearInterval(this.timer);
    this.flushAll();
  }

  private entry(sessionId: string): Pending {
    let entry = this.pending.get(sessionId);
    if (!entry) {
      entry = { rx: 0, tx: 0 };
      this.pending.set(sessionId, entry);
    }
    return entry;
  }

  private maybeFlush(sessionId: string): void {
    const entry = this.pending.get(sessionId);
    if (entry && entry.rx + entry.tx >= this.flushBytes) this.flush(sessionId);
  }

  private flush(sessionId: string): void {
    const entry = this.pending.get(sessionId);
    if (!entry) return;
    this.pending.delete(sessionId);
    let ok: boolean;
    try {
      ok = this.sessions.recordRelayTraffic(sessionId, entry.rx, entry.tx);
    } catch (err) {
      this.onError(err);
      return;
    }
    if (!ok) this.onCapExceeded(sessionId);
  }
}
