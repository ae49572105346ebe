import type { Clock } from "./clock.js";
import type { SecurityLog } from "./securityLog.js";
import { recordSessionEnd } from "./sessionLifecycle.js";
import type { RunitDatabase } from "./store/database.js";
import { ProviderKeyStore } from "./store/providerKeys.js";
import { SessionStore } from "./store/sessionStore.js";

/** What `revokeProviderKey` did: nothing (no such live key), or the sessions it ended. */
export type KeyRevocation = { revoked: false } | { revoked: true; endedSessions: string[] };

/**
 * Revokes a provider key and ends every live (READY or LOCKED) session registered with it, with
 * end reason OPERATOR, in one durable transaction: PROVIDER_KEY_REVOKED, then for each session
 * SESSION_UNLOCKED (a renter held it) or SESSION_REMOVED, and SESSION_ENDED. A server running on
 * the same database sees the sessions ENDED on its next read of them and closes their relay
 * tunnels at its next sweep at the latest (see SessionLifecycle).
 */
export function revokeProviderKey(deps: { store: RunitDatabase; securityLog: SecurityLog; clock: Clock }, keyId: string): KeyRevocation {
  const keys = new ProviderKeyStore(deps.store);
  const sessions = new SessionStore(deps.store);
  const now = deps.clock.now();
  return deps.store.durable((): KeyRevocation => {
    if (!keys.revoke(keyId, now)) return { revoked: false };
    const live = sessions.liveOfKey(keyId);
    deps.securityLog("PROVIDER_KEY_REVOKED", { keyId, sessionsEnded: live.length });
    const endedSessions = live
      .filter((s) => recordSessionEnd(sessions, deps.securityLog, { sessionId: s.sessionId, reason: "OPERATOR", now, details: { providerKeyId: keyId } }))
      .map((s) => s.sessionId);
    return { revoked: true, endedSessions };
  });
}
