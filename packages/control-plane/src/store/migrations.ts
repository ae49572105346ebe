import type Database from "better-sqlite3";

/** One schema step. Applied once, in order, inside a transaction, and recorded in schema_version. */
export interface Migration {
  version: number;
  description: string;
  sql: string;
}

/** The schema history. Append only: never edit an applied step. */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: "provider keys, sessions, locks, audit",
    sql: `
      CREATE TABLE provider_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        key_prefix TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER,
        first_registration_at INTEGER
      );
      CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        provider_key_id TEXT NOT NULL REFERENCES provider_keys(id),
        provider_id TEXT,
        secret_hash TEXT NOT NULL UNIQUE,
        registered_ip TEXT NOT NULL,
        tunnel_kind TEXT NOT NULL CHECK (tunnel_kind IN ('relay', 'cloudflared')),
        public_url TEXT,
        jupyter_token TEXT,
        hardware TEXT NOT NULL,
        pricing TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('READY', 'LOCKED', 'ENDED')),
        end_reason TEXT,
        created_at INTEGER NOT NULL,
        ended_at INTEGER,
        provider_seen_at INTEGER NOT NULL,
        stats TEXT,
        bw_window_start INTEGER NOT NULL,
        bw_bytes INTEGER NOT NULL DEFAULT 0
      );
      CREATE INDEX sessions_live ON sessions(status) WHERE status <> 'ENDED';
      CREATE TABLE locks (
        token_hash TEXT PRIMARY KEY,
        session_id TEXT NOT NULL REFERENCES sessions(id),
        ip TEXT NOT NULL,
        locked_at INTEGER NOT NULL,
        renter_seen_at INTEGER NOT NULL,
        released_at INTEGER
      );
      CREATE UNIQUE INDEX locks_one_live_per_session ON locks(session_id) WHERE released_at IS NULL;
      CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        event TEXT NOT NULL,
        details TEXT NOT NULL
      );
      CREATE INDEX audit_event ON audit(event);
    `,
  },
];

/** Applies every migration not yet in schema_version; safe to run on every start. */
export function runMigrations(db: Database.Database, now: () => number): number[] {
  db.exec(`CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at TEXT NOT NULL
  )`);
  const applied = new Set(
    db.prepare("SELECT version FROM schema_version").all().map((row) => (row as { version: number }).version),
  );
  const ran: number[] = [];
  for (const migration of MIGRATIONS) {
    if (applied.has(migration.version)) continue;
    db.transaction(() => {
      db.exec(migration.sql);
      db.prepare("INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)").run(
        migration.version,
        migration.description,
        new Date(now()).toISOString(),
      );
    })();
    ran.push(migration.version);
  }
  return ran;
}
