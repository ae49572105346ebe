import type { EndReason, SecurityEvent } from "@runit/protocol";
import type { Clock } from "./clock.js";
import type { SecurityLog } from "./securityLog.js";
import type { RunitDatabase } from "./store/database.js";
import { SessionStore, type LockRecord, type SessionRecord } from "./store/sessionStore.js";

/** The timers and limits the session rules use. */
export interface SessionRules {
  providerHeartbeatIntervalMs: number;
  providerStaleMs: number;
  lockTimeoutMs: number;
  bandwidthCapBytes: number;
  bandwidthWindowMs: number;
}

/** Told when a session ends, whatever the reason (the relay closes its tunnel). */
export type SessionEndedListener = (sessionId: string, reason: EndReason) => void;

/** The extra security event each end reason is logged with, besides SESSION_ENDED. */
const END_EVENTS: Partial<Record<EndReason, SecurityEvent>> = {
  PROVIDER_STALE: "SESSION_REMOVED",
  DEREGISTERED: "SESSION_REMOVED",
  LOCK_TIMEOUT: "SESSION_UNLOCKED",
  RELEASED: "SESSION_UNLOCKED",
  BANDWIDTH_EXCEEDED: "BANDWIDTH_EXCEEDED",
};

/**
 * Ends one session in the caller's transaction and writes its security records: the reason's own
 * event (OPERATOR: SESSION_UNLOCKED when a renter held it, else SESSION_REMOVED) and SESSION_ENDED.
 * False when it had already ended. Shared by the server and the operator CLI (key revocation).
 */
export function recordSessionEnd(
  sessionsDb: SessionStore,
  securityLog: SecurityLog,
  end: { sessionId: string; reason: EndReason; now: number; details?: Record<string, string | number> },
): boolean {
  const { sessionId, reason } = end;
  const lock = sessionsDb.lockOf(sessionId);
  if (!sessionsDb.end(sessionId, reason, end.now)) return false;
  const extra = reason === "OPERATOR" ? (lock ? "SESSION_UNLOCKED" : "SESSION_REMOVED") : END_EVENTS[reason];
  if (extra) securityLog(extra, { sessionId, reason, ...(lock ? { ip: lock.ip } : {}), ...end.details });
  securityLog("SESSION_ENDED", { sessionId, reason });
  return true;
}

/**
 * Ending sessions and the timers that end them. Times a provider or renter was last seen are
 * never older than this process's start: nobody could heartbeat while we were down, so a restart
 * gives everyone one full period to come back instead of ending every session at once.
 */
export class SessionLifecycle {
  protected readonly sessionsDb: SessionStore;
  protected readonly startedAt: number;
  /** Renter activity seen by the relay, kept in memory and flushed by `sweep()`. */
  protected readonly relayActivity = new Map<string, number>();
  private readonly flushedActivity = new Map<string, number>();
  /** Sessions this process has seen live: how it notices ends written by another process. */
  private readonly knownLive = new Set<string>();
  private readonly endedListeners = new Set<SessionEndedListener>();

  constructor(
    protected readonly store: RunitDatabase,
    protected readonly clock: Clock,
    protected readonly securityLog: SecurityLog,
    protected readonly rules: SessionRules,
  ) {
    this.sessionsDb = new SessionStore(store);
    this.startedAt = clock.now();
  }

  /** Subscribes to session ends; returns the unsubscribe function. */
  onSessionEnded(listener: SessionEndedListener): () => void {
    this.endedListeners.add(listener);
    return () => this.endedListeners.delete(listener);
  }

  /** When the provider was last seen, for timing purposes. */
  protected providerSeen(session: Pick<SessionRecord, "providerSeenAt">): number {
    return Math.max(session.providerSeenAt, this.startedAt);
  }

  /** When the renter was last active on `lock`, for timing purposes. */
  protected renterSeen(lock: Pick<LockRecord, "sessionId" | "renterSeenAt">): number {
    return Math.max(lock.renterSeenAt, this.relayActivity.get(lock.sessionId) ?? 0, this.startedAt);
  }

  /** The moment `lock` will be released unless the renter shows up. */
  protected lockExpiresAt(lock: Pick<LockRecord, "sessionId" | "renterSeenAt">): number {
    return this.renterSeen(lock) + this.rules.lockTimeoutMs;
  }

  /** Ends a session durably, logs it and tells listeners; false when it had already ended. */
  endSession(sessionId: string, reason: EndReason, details: Record<string, string | number> = {}): boolean {
    const now = this.clock.now();
    const ended = this.store.durable(() => recordSessionEnd(this.sessionsDb, this.securityLog, { sessionId, reason, now, details }));
    if (!ended) return false;
    this.notifyEnded(sessionId, reason);
    return true;
  }

  /** Forgets a session's in-memory state and tells listeners it ended (here or in another process). */
  private notifyEnded(sessionId: string, reason: EndReason): void {
    this.knownLive.delete(sessionId);
    this.relayActivity.delete(sessionId);
    this.flushedActivity.delete(sessionId);
    for (const listener of this.endedListeners) {
      try {
        listener(sessionId, reason);
      } catch {
        // A listener's failure must not undo or block the end of a session.
      }
    }
  }

  /**
   * Another process on the same database (the operator CLI revoking a key) may end a session we
   * saw live: the first time we find it ENDED, our listeners hear of it too (the relay closes its
   * tunnel), exactly as if we had ended it.
   */
  private noticeEnded(session: SessionRecord): void {
    if (session.status === "ENDED" && this.knownLive.has(session.sessionId)) {
      this.notifyEnded(session.sessionId, session.endReason ?? "OPERATOR");
    }
  }

  /** Notes that this process saw `sessionId` live (see `noticeEnded`). */
  protected markLive(sessionId: string): void {
    this.knownLive.add(sessionId);
  }

  /**
   * Ends `session` if its provider key was revoked (OPERATOR) or one of its timers has run out;
   * returns the session as it now stands.
   */
  protected expireIfDue(session: SessionRecord): SessionRecord {
    if (session.status === "ENDED") {
      this.noticeEnded(session);
      return session;
    }
    const now = this.clock.now();
    let ended = false;
    if (session.keyRevoked) {
      ended = this.endSession(session.sessionId, "OPERATOR", { providerKeyId: session.providerKeyId });
    } else if (now - this.providerSeen(session) > this.rules.providerStaleMs) {
      ended = this.endSession(session.sessionId, "PROVIDER_STALE");
    } else if (session.status === "LOCKED") {
      const lock = this.sessionsDb.lockOf(session.sessionId);
      if (lock && now > this.lockExpiresAt(lock)) ended = this.endSession(session.sessionId, "LOCK_TIMEOUT");
    }
    if (!ended) {
      this.markLive(session.sessionId);
      return session;
    }
    return this.sessionsDb.byId(session.sessionId) ?? session;
  }

  /**
   * One pass of the timers: ends sessions whose provider key was revoked (OPERATOR), whose
   * provider went silent (PROVIDER_STALE) or whose renter went silent (LOCK_TIMEOUT), tells
   * listeners about sessions another process ended, and flushes in-memory relay activity. The
   * server runs it every sweepIntervalMs; tests call it after moving their clock.
   */
  sweep(): { ended: string[] } {
    if (!this.store.db.open) return { ended: [] };
    this.flushActivity();
    const ended: string[] = [];
    const live = this.sessionsDb.live();
    const liveIds = new Set(live.map((s) => s.sessionId));
    for (const sessionId of [...this.knownLive]) {
      if (liveIds.has(sessionId)) continue;
      const gone = this.sessionsDb.byId(sessionId);
      if (gone) this.noticeEnded(gone);
      else this.knownLive.delete(sessionId);
    }
    for (const session of live) {
      if (this.expireIfDue(session).status === "ENDED") ended.push(session.sessionId);
    }
    return { ended };
  }

  /** Writes relay activity timestamps to the locks table (cheap writes). */
  protected flushActivity(): void {
    for (const [sessionId, at] of this.relayActivity) {
      if (this.flushedActivity.get(sessionId) === at) continue;
      this.sessionsDb.touchRenter(sessionId, at);
      this.flushedActivity.set(sessionId, at);
    }
  }
}
