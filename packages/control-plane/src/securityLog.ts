import type { Statement } from "better-sqlite3";
import { maskSecret, type SecurityEvent } from "@runit/protocol";
import type { Clock } from "./clock.js";
import type { LineWriter } from "./logger.js";
import type { RunitDatabase } from "./store/database.js";

/** Fields of a security record. Values are flat: strings, numbers, booleans. */
export type SecurityDetails = Record<string, string | number | boolean | null | undefined>;

/** One row of the audit table. */
export interface AuditRecord {
  id: number;
  at: string;
  event: SecurityEvent;
  details: Record<string, unknown>;
}

/**
 * Field names whose values are secrets. The log masks them itself (8-character prefix and `…`), so
 * a caller that forgets to mask cannot leak one.
 */
const SECRET_FIELDS = new Set([
  "key",
  "providerKey",
  "secret",
  "sessionSecret",
  "token",
  "accessToken",
  "jupyterToken",
  "authorization",
  "adminToken",
]);

function maskOnce(value: string): string {
  // Already masked values (prefix + "…", at most 9 chars) pass through unchanged.
  return value.endsWith("…") && value.length <= 9 ? value : maskSecret(value);
}

/** The security log: writes `[SECURITY] <iso> - <EVENT>: <json>` and the same record to the audit table. */
export interface SecurityLog {
  (event: SecurityEvent, details: SecurityDetails): void;
}

/** Listener told about each event (metrics count them). */
export type SecurityEventListener = (event: SecurityEvent) => void;

/** Builds the security log over `writer` (stdout in production) and the audit table of `store`. */
export function createSecurityLog(deps: {
  writer: LineWriter;
  store: RunitDatabase;
  clock: Clock;
  onEvent?: SecurityEventListener;
}): SecurityLog {
  let statement: Statement | undefined;
  const insert = (at: string, event: string, json: string): void => {
    if (!deps.store.db.open) return;
    statement ??= deps.store.db.prepare("INSERT INTO audit (at, event, details) VALUES (?, ?, ?)");
    statement.run(at, event, json);
  };
  return (event, details) => {
    const clean: Record<string, string | number | boolean | null> = {};
    for (const [name, value] of Object.entries(details)) {
      if (value === undefined) continue;
      clean[name] = SECRET_FIELDS.has(name) && typeof value === "string" ? maskOnce(value) : value;
    }
    const at = new Date(deps.clock.now()).toISOString();
    const json = JSON.stringify(clean);
    deps.writer.write(`[SECURITY] ${at} - ${event}: ${json}\n`);
    try {
      insert(at, event, json);
    } catch {
      // The line is on stdout already; an unusable store is reported by /healthz.
    }
    deps.onEvent?.(event);
  };
}

/** Reads audit records (oldest first), optionally of one event. */
export function readAudit(store: RunitDatabase, event?: SecurityEvent): AuditRecord[] {
  const rows = (
    event
      ? store.db.prepare("SELECT * FROM audit WHERE event = ? ORDER BY id").all(event)
      : store.db.prepare("SELECT * FROM audit ORDER BY id").all()
  ) as Array<{ id: number; at: string; event: SecurityEvent; details: string }>;
  return rows.map((row) => ({ ...row, details: JSON.parse(row.details) as Record<string, unknown> }));
}
