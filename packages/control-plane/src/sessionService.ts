import { randomUUID } from "node:crypto";
import {
  PROTOCOL_VERSION,
  RELAY_COOKIE_NAME,
  RegisterSessionRequestSchema,
  RunitError,
  ProviderHeartbeatRequestSchema,
  relayBasePath,
  type ConnectResponse,
  type ProviderSessionStatus,
  type RegisterSessionResponse,
  type RenterHeartbeatResponse,
  type RenterSession,
} from "@runit/protocol";
import type { Clock } from "./clock.js";
import { parseBody } from "./bodyValidation.js";
import { loggableProviderUrl, validateProviderUrl } from "./providerUrl.js";
import { hashSecret, newSecret } from "./secretTokens.js";
import type { SecurityLog } from "./securityLog.js";
import { RelayAccess } from "./relayAccess.js";
import type { SessionRules } from "./sessionLifecycle.js";
import { sessionOriginOf, type SessionOrigin } from "./sessionOrigin.js";
import type { RunitDatabase } from "./store/database.js";
import { ProviderKeyStore } from "./store/providerKeys.js";
import type { LockRecord, SessionRecord } from "./store/sessionStore.js";

/** What the session service needs beyond the timers: cloudflared suffixes, per-session origins. */
export interface SessionServiceConfig extends SessionRules {
  tunnelHostSuffixes: readonly string[];
  sessionOrigin?: SessionOrigin | undefined;
}

/** Where `/access/:token` sends the renter, and the cookie it sets on the way (relay mode). */
export interface AccessRedirect {
  location: string;
  cookie?: string;
  /**
   * Answer with a page that moves on to `location` itself instead of a 302: on a session host the
   * renter arrives from the renter page's site, and a browser withholds a SameSite=Strict cookie
   * from every request of a navigation another site started, redirects included.
   */
  viaPage?: boolean;
}

/**
 * The session rules of RUNIT: provider registration and heartbeats, renter locks, and (through
 * RelayAccess) the calls the relay makes. Every method either returns a reply body or throws a
 * RunitError; every refusal is logged to the security log here, not in the routes.
 */
export class SessionService extends RelayAccess {
  private readonly keys: ProviderKeyStore;

  constructor(deps: {
    store: RunitDatabase;
    clock: Clock;
    securityLog: SecurityLog;
    config: SessionServiceConfig;
  }) {
    super(deps.store, deps.clock, deps.securityLog, deps.config);
    this.keys = new ProviderKeyStore(deps.store);
    this.suffixes = deps.config.tunnelHostSuffixes;
    this.sessionOrigin = deps.config.sessionOrigin;
  }

  private readonly suffixes: readonly string[];
  private readonly sessionOrigin: SessionOrigin | undefined;

  /** `POST /provider/session`. */
  register(providerKey: string | undefined, body: unknown, ip: string): RegisterSessionResponse {
    const key = providerKey ? this.keys.verify(providerKey) : undefined;
    if (!key) {
      this.securityLog("INVALID_PROVIDER_KEY", { ip, key: providerKey ?? "" });
      throw new RunitError("INVALID_PROVIDER_KEY");
    }
    const request = parseBody(RegisterSessionRequestSchema, body);
    if (request.protocolVersion !== undefined && request.protocolVersion !== PROTOCOL_VERSION) {
      throw new RunitError(
        "INVALID_BODY",
        `protocolVersion: this control plane speaks protocol ${PROTOCOL_VERSION}, the agent ${request.protocolVersion}; upgrade the older one`,
        { path: "protocolVersion" },
      );
    }
    let publicUrl: string | null = null;
    if (request.tunnel.kind === "cloudflared") {
      const check = validateProviderUrl(request.tunnel.publicUrl, this.suffixes);
      if (!check.ok) {
        this.securityLog("INVALID_PROVIDER_URL", { ip, reason: check.reason, url: loggableProviderUrl(request.tunnel.publicUrl) });
        throw new RunitError("INVALID_PROVIDER_URL", `Invalid provider URL (${check.reason})`);
      }
      if (!request.jupyterToken) {
        throw new RunitError("INVALID_BODY", "jupyterToken: required in cloudflared mode", { path: "jupyterToken" });
      }
      publicUrl = check.url;
    }
    const sessionId = request.sessionId ?? randomUUID();
    const secret = newSecret();
    const now = this.clock.now();
    this.store.durable(() => {
      // The operator may have revoked the key since it was checked (the CLI is another process).
      if (this.keys.get(key.id)?.revokedAt != null) throw new RunitError("INVALID_PROVIDER_KEY");
      if (this.sessionsDb.exists(sessionId)) {
        throw new RunitError("SESSION_ID_TAKEN");
      }
      this.sessionsDb.insert({
        sessionId,
        providerKeyId: key.id,
        providerId: request.providerId ?? null,
        secretHash: hashSecret(secret),
        registeredIp: ip,
        tunnelKind: request.tunnel.kind,
        publicUrl,
        jupyterToken: request.tunnel.kind === "cloudflared" ? (request.jupyterToken ?? null) : null,
        hardware: request.hardware,
        pricing: request.pricing,
        now,
      });
      if (this.keys.markFirstRegistration(key.id, now)) {
        this.securityLog("NEW_PROVIDER_REGISTERED", { providerKeyId: key.id, providerId: request.providerId, ip });
      }
      this.securityLog("SESSION_REGISTERED", { sessionId, providerKeyId: key.id, tunnel: request.tunnel.kind, ip });
    });
    return { sessionId, sessionSecret: secret, heartbeatIntervalMs: this.rules.providerHeartbeatIntervalMs };
  }

  /** Finds a session by id and checks its secret and registering IP. */
  private authenticateProvider(sessionId: string, secret: string | undefined, ip: string): SessionRecord {
    const session = this.sessionsDb.byId(sessionId);
    if (!session) throw new RunitError("SESSION_NOT_FOUND");
    if (!secret || hashSecret(secret) !== this.sessionsDb.secretHashOf(sessionId)) {
      this.securityLog("INVALID_SESSION_SECRET", { sessionId, ip, secret: secret ?? "" });
      throw new RunitError("INVALID_SESSION_SECRET");
    }
    if (ip !== session.registeredIp) {
      this.securityLog("SESSION_HIJACK_ATTEMPT", { sessionId, ip, expectedIp: session.registeredIp, role: "provider" });
      throw new RunitError("IP_MISMATCH");
    }
    return this.expireIfDue(session);
  }

  private statusOf(session: SessionRecord): ProviderSessionStatus {
    if (session.status === "ENDED") return { status: "ENDED", ...(session.endReason ? { endReason: session.endReason } : {}) };
    return { status: session.status, locked: session.status === "LOCKED" };
  }

  /** `POST /provider/heartbeat`: an ENDED reply tells the agent to recycle its container. */
  providerHeartbeat(secret: string | undefined, body: unknown, ip: string): ProviderSessionStatus {
    const request = parseBody(ProviderHeartbeatRequestSchema, body);
    const session = this.authenticateProvider(request.sessionId, secret, ip);
    if (session.status !== "ENDED") {
      this.sessionsDb.touchProvider(session.sessionId, this.clock.now(), request.stats ? JSON.stringify(request.stats) : null);
    }
    return this.statusOf(session);
  }

  /** `GET /provider/session/:id`. */
  providerStatus(sessionId: string, secret: string | undefined, ip: string): ProviderSessionStatus {
    return this.statusOf(this.authenticateProvider(sessionId, secret, ip));
  }

  /** `DELETE /provider/session/:id`: ends the session (DEREGISTERED); idempotent. */
  deregister(sessionId: string, secret: string | undefined, ip: string): void {
    const session = this.authenticateProvider(sessionId, secret, ip);
    if (session.status !== "ENDED") this.endSession(sessionId, "DEREGISTERED");
  }

  /** `GET /renter/sessions`: READY and LOCKED sessions, never a token or a secret. */
  listForRenters(): RenterSession[] {
    const now = this.clock.now();
    const live = this.sessionsDb.live().map((s) => this.expireIfDue(s)).filter((s) => s.status !== "ENDED");
    return live.map((s) => ({
      sessionId: s.sessionId,
      status: s.status,
      hardware: s.hardware,
      pricing: s.pricing,
      createdAt: new Date(s.createdAt).toISOString(),
      available: s.status === "READY" && this.reachable(s) && now - this.providerSeen(s) <= 2 * this.rules.providerHeartbeatIntervalMs,
      tunnel: s.tunnelKind,
    }));
  }

  /** `POST /renter/sessions/:id/connect`: locks the session to a new token and this IP. */
  connect(sessionId: string, ip: string): ConnectResponse {
    const found = this.sessionsDb.byId(sessionId);
    const session = found ? this.expireIfDue(found) : undefined;
    if (!session || session.status === "ENDED") throw new RunitError("SESSION_NOT_FOUND");
    if (session.status === "LOCKED") {
      this.securityLog("SESSION_ALREADY_LOCKED", { sessionId, ip });
      throw new RunitError("SESSION_ALREADY_LOCKED");
    }
    const token = newSecret();
    const now = this.clock.now();
    const locked = this.store.durable(() => {
      if (!this.sessionsDb.lock(sessionId, hashSecret(token), ip, now)) return false;
      this.securityLog("SESSION_LOCKED", { sessionId, ip });
      return true;
    });
    if (!locked) throw new RunitError("SESSION_ALREADY_LOCKED");
    return {
      accessToken: token,
      accessUrl: `${this.sessionOrigin && session.tunnelKind === "relay" ? sessionOriginOf(this.sessionOrigin, sessionId) : ""}/access/${token}`,
      expiresAt: new Date(now + this.rules.lockTimeoutMs).toISOString(),
      sessionId,
    };
  }

  /** The live, unexpired lock of `token`, held from `ip`; refusals are logged. */
  private lockFor(token: string, ip: string): LockRecord {
    const lock = this.sessionsDb.lockByTokenHash(hashSecret(token));
    const session = lock ? this.sessionsDb.byId(lock.sessionId) : undefined;
    const live = session ? this.expireIfDue(session) : undefined;
    if (!lock || !live || live.status !== "LOCKED") {
      this.securityLog("INVALID_ACCESS_ATTEMPT", { ip, accessToken: token });
      throw new RunitError("INVALID_ACCESS_TOKEN");
    }
    if (lock.ip !== ip) {
      this.securityLog("SESSION_HIJACK_ATTEMPT", { sessionId: lock.sessionId, ip, expectedIp: lock.ip, role: "renter" });
      throw new RunitError("IP_MISMATCH");
    }
    return lock;
  }

  /** `POST /renter/heartbeat/:token`: keeps the lock alive. */
  renterHeartbeat(token: string, ip: string): RenterHeartbeatResponse {
    const lock = this.lockFor(token, ip);
    const now = this.clock.now();
    this.sessionsDb.touchRenter(lock.sessionId, now);
    return { ok: true, lockExpiresAt: new Date(now + this.rules.lockTimeoutMs).toISOString() };
  }

  /** `POST /renter/release/:token`: releases the lock; the session ENDS (RELEASED). */
  release(token: string, ip: string): { ok: true } {
    const lock = this.lockFor(token, ip);
    this.endSession(lock.sessionId, "RELEASED");
    return { ok: true };
  }

  /**
   * `GET /access/:token`: where to send the lock holder. `sessionHost` is the session whose own
   * host the request came to (per-session origins only); the cookie is set there and nowhere else.
   */
  access(token: string, ip: string, https: boolean, sessionHost?: string): AccessRedirect {
    const lock = this.lockFor(token, ip);
    const session = this.sessionsDb.byId(lock.sessionId) as SessionRecord;
    this.sessionsDb.touchRenter(lock.sessionId, this.clock.now());
    if (session.tunnelKind === "cloudflared" && session.publicUrl) {
      const jupyterToken = this.sessionsDb.jupyterTokenOf(session.sessionId) ?? "";
      return { location: `${session.publicUrl}/?token=${encodeURIComponent(jupyterToken)}` };
    }
    if (this.sessionOrigin && sessionHost !== session.sessionId) {
      return { location: `${sessionOriginOf(this.sessionOrigin, session.sessionId)}/access/${token}` };
    }
    const path = relayBasePath(session.sessionId);
    const secure = https ? "; Secure" : "";
    const cookie = `${RELAY_COOKIE_NAME}=${token}; Path=${path}; HttpOnly; SameSite=Strict${secure}`;
    return { location: path, cookie, viaPage: this.sessionOrigin !== undefined };
  }
}
