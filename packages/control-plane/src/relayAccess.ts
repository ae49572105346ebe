import { RunitError } from "@runit/protocol";
import { hashSecret } from "./secretTokens.js";
import { SessionLifecycle } from "./sessionLifecycle.js";
import type { SessionRecord } from "./store/sessionStore.js";

/** The outcome of `authorizeRelay`. */
export type RelayAuthorization = { ok: true } | { ok: false; error: RunitError };

interface BandwidthMeter {
  windowStart: number;
  bytes: number;
  dirty: boolean;
}

/**
 * The calls the relay makes into the session rules: who may open a tunnel, who may send traffic
 * to a session, and how much. Meters and activity live in memory and are flushed to SQLite by
 * every sweep (and on close), so relaying a chunk never waits for the disk.
 */
export class RelayAccess extends SessionLifecycle {
  private readonly tunnels = new Set<string>();
  private readonly meters = new Map<string, BandwidthMeter>();

  constructor(...args: ConstructorParameters<typeof SessionLifecycle>) {
    super(...args);
    // An ended session meters nothing more: its next recordRelayTraffic reloads it and says no.
    this.onSessionEnded((sessionId) => this.meters.delete(sessionId));
  }

  /** The live relay-mode session whose secret this is, opened from its registering IP. */
  authenticateTunnel(secret: string, ip: string): SessionRecord | RunitError {
    const found = secret ? this.sessionsDb.bySecretHash(hashSecret(secret)) : undefined;
    if (!found) {
      this.securityLog("INVALID_SESSION_SECRET", { ip, secret, via: "tunnel" });
      return new RunitError("INVALID_SESSION_SECRET");
    }
    if (found.registeredIp !== ip) {
      this.securityLog("SESSION_HIJACK_ATTEMPT", { sessionId: found.sessionId, ip, expectedIp: found.registeredIp, role: "tunnel" });
      return new RunitError("IP_MISMATCH");
    }
    const session = this.expireIfDue(found);
    if (session.status === "ENDED") return new RunitError("SESSION_NOT_FOUND", "Session has ended");
    if (session.tunnelKind !== "relay") return new RunitError("TUNNEL_UNAVAILABLE", "Session is not in relay mode");
    return session;
  }

  /**
   * May `accessToken` (the relay cookie) from `ip` use session `sessionId`? Refusals are logged.
   * Runs on every relayed request: a live LOCKED session with no timer due is decided from one
   * read (`relayGate`); anything else takes the full path that may end the session first.
   */
  authorizeRelay(sessionId: string, accessToken: string | undefined, ip: string): RelayAuthorization {
    const gate = this.sessionsDb.relayGate(sessionId);
    const now = this.clock.now();
    const lock = gate?.lock;
    const nothingDue =
      gate?.status === "LOCKED" &&
      lock !== undefined &&
      !gate.keyRevoked &&
      now - this.providerSeen(gate) <= this.rules.providerStaleMs &&
      now <= this.lockExpiresAt(lock);
    if (!nothingDue) return this.authorizeRelaySlowly(sessionId, accessToken, ip);
    this.markLive(sessionId);
    return this.admitLockHolder(sessionId, true, lock, accessToken, ip);
  }

  /** `authorizeRelay` for a session that is not plainly live: ends it first if a timer ran out. */
  private authorizeRelaySlowly(sessionId: string, accessToken: string | undefined, ip: string): RelayAuthorization {
    const found = this.sessionsDb.byId(sessionId);
    const session = found ? this.expireIfDue(found) : undefined;
    const lock = session?.status === "LOCKED" ? this.sessionsDb.relayGate(sessionId)?.lock : undefined;
    return this.admitLockHolder(sessionId, session !== undefined && session.status !== "ENDED", lock, accessToken, ip);
  }

  /**
   * The lock holder's test, on a session that is not ENDED when `live`: the cookie's token must be
   * the live lock's, sent from the locking IP. Refusals are logged; admission is renter activity.
   */
  private admitLockHolder(
    sessionId: string,
    live: boolean,
    lock: { tokenHash: string; ip: string } | undefined,
    accessToken: string | undefined,
    ip: string,
  ): RelayAuthorization {
    if (!lock || !accessToken || hashSecret(accessToken) !== lock.tokenHash) {
      this.securityLog("RELAY_ACCESS_DENIED", { sessionId, ip, accessToken: accessToken ?? "" });
      return { ok: false, error: new RunitError(!live || !accessToken ? "INVALID_ACCESS_TOKEN" : "LOCK_REQUIRED") };
    }
    if (lock.ip !== ip) {
      this.securityLog("SESSION_HIJACK_ATTEMPT", { sessionId, ip, expectedIp: lock.ip, role: "relay" });
      return { ok: false, error: new RunitError("IP_MISMATCH") };
    }
    this.relayActivity.set(sessionId, this.clock.now());
    return { ok: true };
  }

  /**
   * Adds relayed bytes to the session's meter and counts them as renter activity. Returns false
   * (after ending the session with BANDWIDTH_EXCEEDED) once the cap of the window is passed.
   */
  recordRelayTraffic(sessionId: string, rxBytes: number, txBytes: number): boolean {
    const meter = this.meterOf(sessionId);
    if (!meter) return false;
    const now = this.clock.now();
    if (now - meter.windowStart >= this.rules.bandwidthWindowMs) {
      meter.windowStart = now;
      meter.bytes = 0;
    }
    meter.bytes += Math.max(0, rxBytes) + Math.max(0, txBytes);
    meter.dirty = true;
    this.relayActivity.set(sessionId, now);
    if (meter.bytes <= this.rules.bandwidthCapBytes) return true;
    this.flushMeters();
    this.endSession(sessionId, "BANDWIDTH_EXCEEDED", { bytes: meter.bytes, capBytes: this.rules.bandwidthCapBytes });
    return false;
  }

  private meterOf(sessionId: string): BandwidthMeter | undefined {
    const cached = this.meters.get(sessionId);
    if (cached) return cached;
    const session = this.sessionsDb.byId(sessionId);
    if (!session || session.status === "ENDED") return undefined;
    const meter = { windowStart: session.bandwidthWindowStart, bytes: session.bandwidthBytes, dirty: false };
    this.meters.set(sessionId, meter);
    return meter;
  }

  /** Marks the session's relay tunnel up or down; drives `available` in the renter listing. */
  setTunnelConnected(sessionId: string, connected: boolean): void {
    const was = this.tunnels.has(sessionId);
    if (was === connected) return;
    if (connected) this.tunnels.add(sessionId);
    else this.tunnels.delete(sessionId);
    this.securityLog(connected ? "TUNNEL_CONNECTED" : "TUNNEL_DISCONNECTED", { sessionId });
  }

  /** Can a renter reach this session right now (cloudflared: yes; relay: when its tunnel is up)? */
  protected reachable(session: SessionRecord): boolean {
    return session.tunnelKind === "cloudflared" || this.tunnels.has(session.sessionId);
  }

  /** Writes changed bandwidth meters to SQLite (cheap writes). */
  flushMeters(): void {
    if (!this.store.db.open) return;
    for (const [sessionId, meter] of this.meters) {
      if (!meter.dirty) continue;
      this.sessionsDb.saveBandwidth(sessionId, meter.windowStart, meter.bytes);
      meter.dirty = false;
    }
  }

  /** Writes in-memory meters and relay activity to SQLite (on shutdown). */
  flush(): void {
    if (!this.store.db.open) return;
    this.flushActivity();
    this.flushMeters();
  }

  /** Sweeps timers, then flushes meters and forgets those of ended sessions. */
  override sweep(): { ended: string[] } {
    const result = super.sweep();
    if (!this.store.db.open) return result;
    this.flushMeters();
    for (const sessionId of this.meters.keys()) {
      if (this.sessionsDb.byId(sessionId)?.status === "ENDED") this.meters.delete(sessionId);
    }
    return result;
  }
}
