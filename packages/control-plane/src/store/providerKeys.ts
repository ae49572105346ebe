import { randomUUID } from "node:crypto";
import { maskSecret, type Secret } from "@runit/protocol";
import { hashSecret, newSecret } from "../secretTokens.js";
import type { RunitDatabase } from "./database.js";

/** A provider key as stored: never the key itself, only its hash and masked prefix. */
export interface ProviderKeyRecord {
  id: string;
  name: string;
  keyPrefix: string;
  createdAt: number;
  revokedAt: number | null;
  firstRegistrationAt: number | null;
}

interface Row {
  id: string;
  name: string;
  key_prefix: string;
  created_at: number;
  revoked_at: number | null;
  first_registration_at: number | null;
}

function toRecord(row: Row): ProviderKeyRecord {
  return {
    id: row.id,
    name: row.name,
    keyPrefix: row.key_prefix,
    createdAt: row.created_at,
    revokedAt: row.revoked_at,
    firstRegistrationAt: row.first_registration_at,
  };
}

/** Provider API keys: created by the operator CLI, stored hashed, checked on registration. */
export class ProviderKeyStore {
  constructor(private readonly store: RunitDatabase) {}

  /** Creates a key; the returned `key` is the only time it exists in clear. */
  create(name: string, now: number): { record: ProviderKeyRecord; key: Secret } {
    const key = newSecret("rk_");
    const id = randomUUID();
    this.store.durable(() =>
      this.store.db
        .prepare("INSERT INTO provider_keys (id, name, key_hash, key_prefix, created_at) VALUES (?, ?, ?, ?, ?)")
        .run(id, name, hashSecret(key), maskSecret(key), now),
    );
    return { record: this.get(id) as ProviderKeyRecord, key };
  }

  /** Every key, oldest first. */
  list(): ProviderKeyRecord[] {
    return (this.store.db.prepare("SELECT * FROM provider_keys ORDER BY created_at, id").all() as Row[]).map(toRecord);
  }

  /** One key by id. */
  get(id: string): ProviderKeyRecord | undefined {
    const row = this.store.db.prepare("SELECT * FROM provider_keys WHERE id = ?").get(id) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  /** Revokes a key; false when no such key or already revoked. */
  revoke(id: string, now: number): boolean {
    return this.store.durable(
      () =>
        this.store.db
          .prepare("UPDATE provider_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
          .run(now, id).changes === 1,
    );
  }

  /** The live (unrevoked) key matching `key`, or undefined. */
  verify(key: string): ProviderKeyRecord | undefined {
    const row = this.store.db
      .prepare("SELECT * FROM provider_keys WHERE key_hash = ? AND revoked_at IS NULL")
      .get(hashSecret(key)) as Row | undefined;
    return row ? toRecord(row) : undefined;
  }

  /** Records the key's first registration; true the first time only. */
  markFirstRegistration(id: string, now: number): boolean {
    return (
      this.store.db
        .prepare("UPDATE provider_keys SET first_registration_at = ? WHERE id = ? AND first_registration_at IS NULL")
        .run(now, id).changes === 1
    );
  }
}
