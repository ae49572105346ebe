// Keeps the renter's lock alive with renter heartbeats while the page stays open. The pace
// follows the server's lockExpiresAt (a third of the time left, at most the protocol's interval),
// so a control plane with short timers (tests) is kept alive as well as one with the defaults.

import { createHeartbeatTimer, type HeartbeatTimer } from "./heartbeatTimer.js";
import { ApiError, RENTER_HEARTBEAT_INTERVAL_MS, heartbeat } from "./renterApi.js";

/** What the keeper reports to the page. */
export interface LockKeeperEvents {
  /** A heartbeat was accepted; the lock now lasts until `lockExpiresAt` (ms epoch). */
  onAlive(lockExpiresAt: number): void;
  /**
   * The lock is gone for good (released, timed out, refused): stop using it. `lockExpiresAt` is
   * when the last accepted heartbeat said it would lapse: a lock lost before then did not lapse.
   */
  onLost(error: ApiError, lockExpiresAt: number): void;
  /** A heartbeat failed but the lock may still stand (network, 429, another address); the keeper retries. */
  onTrouble(error: ApiError): void;
}

const MIN_DELAY_MS = 500;

/**
 * Whether a lock may still stand after a heartbeat or release failed with `error` (a network
 * failure, 429, an unexpected answer, another address): then the page keeps it and tries again.
 * An address that changed (VPN, another network) may change back: the lock is bound to the
 * address it was taken from and stands until it lapses, so the page keeps trying until the server
 * says it is gone, rather than forgetting a lock the renter could still keep.
 */
export function lockMayStillStand(error: ApiError): boolean {
  return error.kind === "network" || error.kind === "rate-limited" || error.kind === "other" || error.kind === "ip-mismatch";
}

/** How long before the lock lapses a refused heartbeat is tried again at the latest. */
const LAST_TRY_MARGIN_MS = 3_000;

/**
 * The delay before trying again after a heartbeat that failed without losing the lock (network,
 * 429): soon (at most 2 s), or when the server's Retry-After says, but never past the last
 * moment the lock can still be saved. A Retry-After of 60 s against a 60 s lock would otherwise
 * let the lock lapse, and the session end, while the page waits politely.
 */
export function retryDelay(lockExpiresAt: number, now: number, retryAfterMs: number): number {
  const soon = Math.min(nextHeartbeatDelay(lockExpiresAt, now), 2_000);
  const lastChance = lockExpiresAt - now - LAST_TRY_MARGIN_MS;
  return Math.max(MIN_DELAY_MS, Math.min(Math.max(soon, retryAfterMs), lastChance));
}

/** The delay before the next heartbeat, given when the lock lapses. */
export function nextHeartbeatDelay(lockExpiresAt: number, now: number): number {
  const left = lockExpiresAt - now;
  return Math.max(MIN_DELAY_MS, Math.min(RENTER_HEARTBEAT_INTERVAL_MS, Math.floor(left / 3)));
}

/** One lock's heartbeat loop; `stop()` ends it. */
export class LockKeeper {
  private readonly timer: HeartbeatTimer = createHeartbeatTimer();
  private scheduled = false;
  private stopped = false;
  private lockExpiresAt: number;

  constructor(
    private readonly accessToken: string,
    private readonly events: LockKeeperEvents,
    lockExpiresAt: number,
  ) {
    this.lockExpiresAt = lockExpiresAt;
  }

  /** Sends the first heartbeat after `firstDelayMs`, then paces itself. */
  start(firstDelayMs: number): void {
    this.schedule(firstDelayMs);
  }

  /** Sends a heartbeat now (e.g. the session left the list), unless one is in flight. */
  beatNow(): void {
    if (this.stopped || !this.scheduled) return;
    this.timer.clear();
    void this.beat();
  }

  /** Ends the loop; no event fires after this. */
  stop(): void {
    this.stopped = true;
    this.scheduled = false;
    this.timer.close();
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.scheduled = true;
    this.timer.set(delayMs, () => void this.beat());
  }

  private async beat(): Promise<void> {
    this.scheduled = false;
    try {
      this.lockExpiresAt = await heartbeat(this.accessToken);
      if (this.stopped) return;
      this.events.onAlive(this.lockExpiresAt);
      this.schedule(nextHeartbeatDelay(this.lockExpiresAt, Date.now()));
    } catch (err) {
      if (this.stopped) return;
      const error = err instanceof ApiError ? err : new ApiError("other", 0, String(err));
      if (lockMayStillStand(error)) {
        this.events.onTrouble(error);
        const wait = error.retryAfterSeconds !== undefined ? error.retryAfterSeconds * 1000 : 0;
        this.schedule(retryDelay(this.lockExpiresAt, Date.now(), wait));
        return;
      }
      this.stop();
      this.events.onLost(error, this.lockExpiresAt);
    }
  }
}
