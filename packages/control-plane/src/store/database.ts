import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import Database from "better-sqlite3";
import { RunitError } from "@runit/protocol";
import { runMigrations } from "./migrations.js";

/**
 * The one SQLite connection of a process (better-sqlite3 is synchronous, so it is also the one
 * writer). WAL mode; `durable()` commits with synchronous=FULL so a lock or session change is on
 * disk before the reply, while `cheap` writes (heartbeat timestamps, meters) run at NORMAL.
 */
export class RunitDatabase {
  readonly db: Database.Database;
  private inDurable = false;

  private constructor(db: Database.Database) {
    this.db = db;
  }

  /** Opens (creating directories and file as needed), sets WAL and runs pending migrations. */
  static open(path: string, now: () => number = Date.now): RunitDatabase {
    if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true });
    const db = new Database(path);
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.pragma("foreign_keys = ON");
    db.pragma("busy_timeout = 5000");
    runMigrations(db, now);
    return new RunitDatabase(db);
  }

  /** Runs `fn` in one IMMEDIATE transaction committed with an fsync of the WAL (synchronous=FULL). */
  durable<T>(fn: () => T): T {
    this.assertOpen();
    if (this.inDurable || this.db.inTransaction) return this.db.transaction(fn)();
    this.inDurable = true;
    this.db.pragma("synchronous = FULL");
    try {
      // IMMEDIATE takes the write lock up front (waiting on busy_timeout): a deferred transaction
      // that reads first fails with SQLITE_BUSY if another process (the operator CLI) commits
      // between its read and its first write.
      return this.db.transaction(fn).immediate();
    } finally {
      this.db.pragma("synchronous = NORMAL");
      this.inDurable = false;
    }
  }

  /** True when a trivial query against our schema answers. */
  healthy(): boolean {
    try {
      this.db.prepare("SELECT count(*) AS n FROM schema_version").get();
      return true;
    } catch {
      return false;
    }
  }

  /** Throws STORE_UNAVAILABLE when the connection has been closed. */
  assertOpen(): void {
    if (!this.db.open) throw new RunitError("STORE_UNAVAILABLE");
  }

  /** Closes the connection (checkpointing the WAL); idempotent. */
  close(): void {
    if (this.db.open) this.db.close();
  }
}
