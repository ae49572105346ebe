import { z } from "zod";

/** Session status values of the public contract. */
export const SESSION_STATUSES = ["READY", "LOCKED", "ENDED"] as const;
export const SessionStatusSchema = z.enum(SESSION_STATUSES);
export type SessionStatus = z.infer<typeof SessionStatusSchema>;

/** Why a session ended; shown to the provider in heartbeat replies and in the audit log. */
export const END_REASONS = [
  "RELEASED",
  "LOCK_TIMEOUT",
  "PROVIDER_STALE",
  "DEREGISTERED",
  "IDLE_TIMEOUT",
  "BANDWIDTH_EXCEEDED",
  "OPERATOR",
] as const;
export const EndReasonSchema = z.enum(END_REASONS);
export type EndReason = z.infer<typeof EndReasonSchema>;

const shortText = z.string().min(1).max(128);

/** The shape of a session id: a lowercase UUID. */
export const SESSION_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A session id: a lowercase UUID. */
export const SessionIdSchema = z.string().regex(SESSION_ID_PATTERN, "expected a lowercase UUID");

export const GpuSchema = z.strictObject({
  name: shortText,
  vramMb: z.number().int().nonnegative().max(10_000_000),
});

export const HardwareSchema = z.strictObject({
  cpus: z.number().positive().max(4096),
  memoryMb: z.number().int().positive().max(100_000_000),
  gpus: z.array(GpuSchema).max(64),
});
export type Hardware = z.infer<typeof HardwareSchema>;

export const PricingSchema = z.strictObject({
  hourlyUsd: z.number().nonnegative().max(100_000),
});
export type Pricing = z.infer<typeof PricingSchema>;

/**
 * How renter traffic reaches the session. `relay`: through the control plane over the agent's
 * outbound WebSocket. `cloudflared`: the provider's quick-tunnel URL, validated by the server.
 */
export const TunnelSpecSchema = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("relay") }),
  z.strictObject({ kind: z.literal("cloudflared"), publicUrl: z.string().min(1).max(2048) }),
]);
export type TunnelSpec = z.infer<typeof TunnelSpecSchema>;

/** `POST /provider/session` body. */
export const RegisterSessionRequestSchema = z.strictObject({
  /**
   * Proposed by the agent so Jupyter can start with base_url `/s/<id>/` before it registers.
   * Refused with 409 SESSION_ID_TAKEN when the id was ever used. The server makes one if absent.
   */
  sessionId: SessionIdSchema.optional(),
  providerId: shortText.optional(),
  protocolVersion: z.number().int().positive().optional(),
  tunnel: TunnelSpecSchema,
  /** cloudflared mode: the control plane needs it to hand the renter in. Never listed or logged. */
  jupyterToken: z.string().min(16).max(256).regex(/^[A-Za-z0-9_-]+$/).optional(),
  hardware: HardwareSchema,
  pricing: PricingSchema,
});
export type RegisterSessionRequest = z.infer<typeof RegisterSessionRequestSchema>;

/** `POST /provider/session` 201 reply. */
export const RegisterSessionResponseSchema = z.object({
  sessionId: SessionIdSchema,
  sessionSecret: z.string().min(32),
  heartbeatIntervalMs: z.number().int().positive(),
});
export type RegisterSessionResponse = z.infer<typeof RegisterSessionResponseSchema>;

/** Counters the agent reports with each heartbeat. */
export const SessionStatsSchema = z
  .object({
    rxBytes: z.number().int().nonnegative(),
    txBytes: z.number().int().nonnegative(),
    lastActivity: z.iso.datetime(),
  })
  .partial()
  .catchall(z.union([z.number(), z.string().max(256), z.boolean()]));
export type SessionStats = z.infer<typeof SessionStatsSchema>;

/** `POST /provider/heartbeat` body. */
export const ProviderHeartbeatRequestSchema = z.strictObject({
  sessionId: SessionIdSchema,
  stats: SessionStatsSchema.optional(),
});
export type ProviderHeartbeatRequest = z.infer<typeof ProviderHeartbeatRequestSchema>;

/**
 * `POST /provider/heartbeat` and `GET /provider/session/:id` reply. When `status` is ENDED the
 * agent removes the container and offers a fresh session.
 */
export const ProviderSessionStatusSchema = z.object({
  status: SessionStatusSchema,
  endReason: EndReasonSchema.optional(),
  /** True while a renter holds the lock (the agent must not idle-stop a LOCKED session). */
  locked: z.boolean().optional(),
});
export type ProviderSessionStatus = z.infer<typeof ProviderSessionStatusSchema>;

/** One row of `GET /renter/sessions`: never a token or a secret. */
export const RenterSessionSchema = z.object({
  sessionId: SessionIdSchema,
  status: SessionStatusSchema,
  hardware: HardwareSchema,
  pricing: PricingSchema,
  createdAt: z.iso.datetime(),
  /** False while the provider's tunnel is down (relay) or its heartbeats are late. */
  available: z.boolean().optional(),
  tunnel: z.enum(["relay", "cloudflared"]).optional(),
});
export type RenterSession = z.infer<typeof RenterSessionSchema>;
export const RenterSessionListSchema = z.array(RenterSessionSchema);

/** `POST /renter/sessions/:id/connect` 201 reply. */
export const ConnectResponseSchema = z.object({
  accessToken: z.string().min(32),
  accessUrl: z.string(),
  expiresAt: z.iso.datetime(),
  sessionId: SessionIdSchema.optional(),
});
export type ConnectResponse = z.infer<typeof ConnectResponseSchema>;

/** `POST /renter/heartbeat/:accessToken` 200 reply. */
export const RenterHeartbeatResponseSchema = z.object({
  ok: z.literal(true),
  lockExpiresAt: z.iso.datetime(),
});
export type RenterHeartbeatResponse = z.infer<typeof RenterHeartbeatResponseSchema>;

/** `POST /renter/release/:accessToken` 200 reply. */
export const ReleaseResponseSchema = z.object({ ok: z.literal(true) });

/** `GET /healthz` reply. */
export const HealthResponseSchema = z.object({ status: z.enum(["ok", "unavailable"]) });
