export { createApp, type AppDeps, type RelayContext, type RelayFactory, type RelayPlugin, type RunitApp } from "./app.js";
export { startServer, type RunningServer, type StartServerOptions } from "./server.js";
export { loadConfig, ConfigError, type ServerConfig, type RateLimitSetting } from "./config.js";
export { systemClock, type Clock } from "./clock.js";
export { createLogger, type Logger, type LineWriter } from "./logger.js";
export { createSecurityLog, readAudit, type SecurityLog, type SecurityDetails, type AuditRecord } from "./securityLog.js";
export { SessionService, type AccessRedirect, type SessionServiceConfig } from "./sessionService.js";
export type { RelayAuthorization } from "./relayAccess.js";
export type { SessionEndedListener, SessionRules } from "./sessionLifecycle.js";
export type { SessionRecord, LockRecord } from "./store/sessionStore.js";
export { RunitDatabase } from "./store/database.js";
export { ProviderKeyStore, type ProviderKeyRecord } from "./store/providerKeys.js";
export { revokeProviderKey, type KeyRevocation } from "./keyRevocation.js";
export { validateProviderUrl, type ProviderUrlCheck, type ProviderUrlRefusal } from "./providerUrl.js";
export { resolveClientIp, parseTrustProxy, normalizeIp, type TrustProxy } from "./clientIp.js";
export { hashSecret, newSecret, bearerToken } from "./secretTokens.js";
// relay (issue 4): the built-in relay, plugged in with startServer({ relay: (ctx) => createRelay(ctx) }).
export { createRelay, type RelayOptions, type RelayStats } from "./relay/index.js";
