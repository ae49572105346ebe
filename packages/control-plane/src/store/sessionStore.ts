import type { EndReason, Hardware, Pricing, SessionStatus } from "@runit/protocol";
import type { Statement } from "better-sqlite3";
import type { RunitDatabase } from "./database.js";

/** A session as the rest of the control plane sees it: no secret, no token, no hash. */
export interface SessionRecord {
  sessionId: string;
  providerKeyId: string;
  providerId: string | null;
  registeredIp: string;
  tunnelKind: "relay" | "cloudflared";
  /** cloudflared mode only: the validated public URL. */
  publicUrl: string | null;
  hardware: Hardware;
  pricing: Pricing;
  status: SessionStatus;
  endReason: EndReason | null;
  createdAt: number;
  endedAt: number | null;
  providerSeenAt: number;
  bandwidthWindowStart: number;
  bandwidthBytes: number;
  /** True once the operator has revoked the provider key the session was registered with. */
  keyRevoked: boolean;
}

/** The live lock of a session. */
export interface LockRecord {
  sessionId: string;
  ip: string;
  lockedAt: number;
  renterSeenAt: number;
}

/** What the relay needs to admit one request, read in one query: the session and its live lock. */
export interface RelayGate {
  status: SessionStatus;
  providerSeenAt: number;
  keyRevoked: boolean;
  lock: { sessionId: string; tokenHash: string; ip: string; renterSeenAt: number } | undefined;
}

/** Everything stored at registration. */
export interface NewSession {
  sessionId: string;
  providerKeyId: string;
  providerId: string | null;
  secretHash: string;
  registeredIp: string;
  tunnelKind: "relay" | "cloudflared";
  publicUrl: string | null;
  jupyterToken: string | null;
  hardware: Hardware;
  pricing: Pricing;
  now: number;
}

interface SessionRow {
  id: string;
  provider_key_id: string;
  provider_id: string | null;
  registered_ip: string;
  tunnel_kind: "relay" | "cloudflared";
  public_url: string | null;
  hardware: string;
  pricing: string;
  status: SessionStatus;
  end_reason: EndReason | null;
  created_at: number;
  ended_at: number | null;
  provider_seen_at: number;
  bw_window_start: number;
  bw_bytes: number;
  key_revoked: number;
}

interface LockRow {
  session_id: string;
  ip: string;
  locked_at: number;
  renter_seen_at: number;
}

function toSession(row: SessionRow): SessionRecord {
  return {
    sessionId: row.id,
    providerKeyId: row.provider_key_id,
    providerId: row.provider_id,
    registeredIp: row.registered_ip,
    tunnelKind: row.tunnel_kind,
    publicUrl: row.public_url,
    hardware: JSON.parse(row.hardware) as Hardware,
    pricing: JSON.parse(row.pricing) as Pricing,
    status: row.status,
    endReason: row.end_reason,
    createdAt: row.created_at,
    endedAt: row.ended_at,
    providerSeenAt: row.provider_seen_at,
    bandwidthWindowStart: row.bw_window_start,
    bandwidthBytes: row.bw_bytes,
    keyRevoked: row.key_revoked === 1,
  };
}

function toLock(row: LockRow): LockRecord {
  return { sessionId: row.session_id, ip: row.ip, lockedAt: row.locked_at, renterSeenAt: row.renter_seen_at };
}

const SESSION_COLUMNS = `id, provider_key_id, provider_id, registered_ip, tunnel_kind, public_url, hardware, pricing,
  status, end_reason, created_at, ended_at, provider_seen_at, bw_window_start, bw_bytes,
  (SELECT revoked_at IS NOT NULL FROM provider_keys WHERE provider_keys.id = sessions.provider_key_id) AS key_revoked`;

/** SQL for sessions and locks. Callers wrap state changes in `RunitDatabase.durable`. */
export class SessionStore {
  constructor(private readonly store: RunitDatabase) {}

  private readonly statements = new Map<string, Statement>();

  /** A cached prepared statement (the connection stays open for the life of the store). */
  private sql(text: string): Statement {
    this.store.assertOpen();
    let statement = this.statements.get(text);
    if (!statement) {
      statement = this.store.db.prepare(text);
      this.statements.set(text, statement);
    }
    return statement;
  }

  /** Inserts a READY session. */
  insert(s: NewSession): void {
    this.sql(
        `INSERT INTO sessions (id, provider_key_id, provider_id, secret_hash, registered_ip, tunnel_kind, public_url,
          jupyter_token, hardware, pricing, status, created_at, provider_seen_at, bw_window_start)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'READY', ?, ?, ?)`,
      )
      .run(
        s.sessionId,
        s.providerKeyId,
        s.providerId,
        s.secretHash,
        s.registeredIp,
        s.tunnelKind,
        s.publicUrl,
        s.jupyterToken,
        JSON.stringify(s.hardware),
        JSON.stringify(s.pricing),
        s.now,
        s.now,
        s.now,
      );
  }

  /** True when a session with this id was ever registered (ended ones included). */
  exists(id: string): boolean {
    return this.sql("SELECT 1 FROM sessions WHERE id = ?").get(id) !== undefined;
  }

  /** One session by id. */
  byId(id: string): SessionRecord | undefined {
    const row = this.sql(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE id = ?`).get(id) as
      | SessionRow
      | undefined;
    return row ? toSession(row) : undefined;
  }

  /** The relay's per-request read: session state and live lock together (no JSON decoding). */
  relayGate(id: string): RelayGate | undefined {
    const row = this.sql(
      `SELECT s.status, s.provider_seen_at,
         (SELECT revoked_at IS NOT NULL FROM provider_keys WHERE provider_keys.id = s.provider_key_id) AS key_revoked,
         l.token_hash, l.ip, l.renter_seen_at
       FROM sessions s LEFT JOIN locks l ON l.session_id = s.id AND l.released_at IS NULL
       WHERE s.id = ?`,
    ).get(id) as
      | { status: SessionStatus; provider_seen_at: number; key_revoked: number; token_hash: string | null; ip: string | null; renter_seen_at: number | null }
      | undefined;
    if (!row) return undefined;
    const lock =
      row.token_hash === null ? undefined : { sessionId: id, tokenHash: row.token_hash, ip: row.ip ?? "", renterSeenAt: row.renter_seen_at ?? 0 };
    return { status: row.status, providerSeenAt: row.provider_seen_at, keyRevoked: row.key_revoked === 1, lock };
  }

  /** One session by the hash of its secret. */
  bySecretHash(hash: string): SessionRecord | undefined {
    const row = this.sql(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE secret_hash = ?`).get(hash) as
      | SessionRow
      | undefined;
    return row ? toSession(row) : undefined;
  }

  /** The secret hash of a session (for the constant-shape secret check). */
  secretHashOf(id: string): string | undefined {
    return (this.sql("SELECT secret_hash FROM sessions WHERE id = ?").get(id) as { secret_hash: string } | undefined)
      ?.secret_hash;
  }

  /** The Jupyter token of a cloudflared session (needed to hand the renter in). */
  jupyterTokenOf(id: string): string | null {
    return (
      (this.sql("SELECT jupyter_token FROM sessions WHERE id = ?").get(id) as { jupyter_token: string | null } | undefined)
        ?.jupyter_token ?? null
    );
  }

  /** Sessions that have not ended, oldest first. */
  live(): SessionRecord[] {
    return (
      this.sql(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE status <> 'ENDED' ORDER BY created_at, rowid`).all() as SessionRow[]
    ).map(toSession);
  }

  /** Sessions registered with provider key `keyId` that have not ended, oldest first. */
  liveOfKey(keyId: string): SessionRecord[] {
    return (
      this.sql(`SELECT ${SESSION_COLUMNS} FROM sessions WHERE provider_key_id = ? AND status <> 'ENDED' ORDER BY created_at, rowid`)
        .all(keyId) as SessionRow[]
    ).map(toSession);
  }

  /** Records a provider heartbeat (cheap write: no fsync of its own). */
  touchProvider(id: string, now: number, stats: string | null): void {
    this.sql("UPDATE sessions SET provider_seen_at = max(provider_seen_at, ?), stats = coalesce(?, stats) WHERE id = ?")
      .run(now, stats, id);
  }

  /** Ends a session and releases its lock; false when it had already ended. */
  end(id: string, reason: EndReason, now: number): boolean {
    const changed = this.sql("UPDATE sessions SET status = 'ENDED', end_reason = ?, ended_at = ? WHERE id = ? AND status <> 'ENDED'")
      .run(reason, now, id).changes;
    this.sql("UPDATE locks SET released_at = ? WHERE session_id = ? AND released_at IS NULL").run(now, id);
    return changed === 1;
  }

  /** Locks a READY session to a token hash and IP; false when it was not READY. */
  lock(id: string, tokenHash: string, ip: string, now: number): boolean {
    const changed = this.sql("UPDATE sessions SET status = 'LOCKED' WHERE id = ? AND status = 'READY'").run(id).changes;
    if (changed !== 1) return false;
    this.sql("INSERT INTO locks (token_hash, session_id, ip, locked_at, renter_seen_at) VALUES (?, ?, ?, ?, ?)")
      .run(tokenHash, id, ip, now, now);
    return true;
  }

  /** The live lock held by a token hash. */
  lockByTokenHash(hash: string): LockRecord | undefined {
    const row = this.sql("SELECT session_id, ip, locked_at, renter_seen_at FROM locks WHERE token_hash = ? AND released_at IS NULL")
      .get(hash) as LockRow | undefined;
    return row ? toLock(row) : undefined;
  }

  /** The live lock of a session. */
  lockOf(sessionId: string): LockRecord | undefined {
    const row = this.sql("SELECT session_id, ip, locked_at, renter_seen_at FROM locks WHERE session_id = ? AND released_at IS NULL")
      .get(sessionId) as LockRow | undefined;
    return row ? toLock(row) : undefined;
  }

  /** Records renter activity on a live lock (cheap write). */
  touchRenter(sessionId: string, now: number): void {
    this.sql("UPDATE locks SET renter_seen_at = max(renter_seen_at, ?) WHERE session_id = ? AND released_at IS NULL")
      .run(now, sessionId);
  }

  /** Stores a session's bandwidth meter (cheap write). */
  saveBandwidth(id: string, windowStart: number, bytes: number): void {
    this.sql("UPDATE sessions SET bw_window_start = ?, bw_bytes = ? WHERE id = ?").run(windowStart, bytes, id);
  }

  /** Counts of sessions per status (for metrics). */
  countByStatus(): Record<SessionStatus, number> {
    const counts: Record<SessionStatus, number> = { READY: 0, LOCKED: 0, ENDED: 0 };
    for (const row of this.sql("SELECT status, count(*) AS n FROM sessions GROUP BY status").all() as Array<{
      status: SessionStatus;
      n: number;
    }>) {
      counts[row.status] = row.n;
    }
    return counts;
  }
}
