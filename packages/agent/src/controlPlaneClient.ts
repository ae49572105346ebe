import {
  ErrorBodySchema,
  ProviderSessionStatusSchema,
  RegisterSessionResponseSchema,
  asSecret,
  type ProviderSessionStatus,
  type RegisterSessionRequest,
  type Secret,
  type SessionStats,
} from "@runit/protocol";
import type { z } from "zod";

/** A control-plane answer the agent cannot use; `fatal` means retrying will not help. */
export class ControlPlaneError extends Error {
  override name = "ControlPlaneError";
  constructor(
    message: string,
    readonly status: number | undefined,
    readonly code: string | undefined,
    readonly fatal: boolean,
  ) {
    super(message);
  }
}

/** A registered session as the agent holds it. */
export interface Registration {
  sessionId: string;
  sessionSecret: Secret;
  heartbeatIntervalMs: number;
}

/** Heartbeat result: the session's status, or `gone` when the server no longer knows it (404). */
export type HeartbeatResult = ProviderSessionStatus | { status: "GONE" };

/** Talks to the control plane; every reply is validated with the protocol schemas. */
export interface ControlPlaneClient {
  register(body: RegisterSessionRequest): Promise<Registration>;
  heartbeat(sessionId: string, secret: Secret, stats?: SessionStats): Promise<HeartbeatResult>;
  status(sessionId: string, secret: Secret): Promise<HeartbeatResult>;
  /** DELETE; a session the server no longer knows counts as deleted. */
  deregister(sessionId: string, secret: Secret): Promise<void>;
  /** GET /healthz: true when the server answers ok. */
  health(): Promise<boolean>;
}

/** Builds the client over an injected fetch. */
export function createControlPlaneClient(opts: { serverUrl: string; providerKey: Secret; fetch?: typeof fetch; timeoutMs?: number }): ControlPlaneClient {
  const fetchFn = opts.fetch ?? fetch;
  const base = opts.serverUrl.replace(/\/+$/, "");
  const timeoutMs = opts.timeoutMs ?? 10_000;

  async function call(method: string, path: string, bearer: string, body?: unknown): Promise<Response> {
    try {
      return await fetchFn(`${base}${path}`, {
        method,
        headers: { Authorization: `Bearer ${bearer}`, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (err) {
      throw new ControlPlaneError(`control plane ${base} unreachable: ${(err as Error).message}`, undefined, undefined, false);
    }
  }

  async function failure(res: Response, what: string): Promise<ControlPlaneError> {
    const parsed = ErrorBodySchema.safeParse(await res.json().catch(() => undefined));
    const code = parsed.success ? parsed.data.code : undefined;
    const text = parsed.success ? parsed.data.error : res.statusText;
    const fatal = res.status === 400 || res.status === 401 || res.status === 403 || res.status === 409;
    return new ControlPlaneError(`${what} refused: ${res.status} ${text}${code ? ` (${code})` : ""}`, res.status, code, fatal);
  }

  async function parse<S extends z.ZodType>(schema: S, res: Response, what: string): Promise<z.infer<S>> {
    const result = schema.safeParse(await res.json().catch(() => undefined));
    if (!result.success) throw new ControlPlaneError(`${what}: unexpected reply from the control plane`, res.status, undefined, false);
    return result.data;
  }

  async function sessionStatus(res: Response, what: string): Promise<HeartbeatResult> {
    if (res.status === 404) return { status: "GONE" };
    if (!res.ok) throw await failure(res, what);
    return parse(ProviderSessionStatusSchema, res, what);
  }

  return {
    async register(body) {
      const res = await call("POST", "/provider/session", opts.providerKey, body);
      if (res.status !== 201) throw await failure(res, "registration");
      const reply = await parse(RegisterSessionResponseSchema, res, "registration");
      return { sessionId: reply.sessionId, sessionSecret: asSecret(reply.sessionSecret), heartbeatIntervalMs: reply.heartbeatIntervalMs };
    },
    async heartbeat(sessionId, secret, stats) {
      const res = await call("POST", "/provider/heartbeat", secret, { sessionId, ...(stats ? { stats } : {}) });
      return sessionStatus(res, "heartbeat");
    },
    async status(sessionId, secret) {
      return sessionStatus(await call("GET", `/provider/session/${encodeURIComponent(sessionId)}`, secret), "status");
    },
    async deregister(sessionId, secret) {
      const res = await call("DELETE", `/provider/session/${encodeURIComponent(sessionId)}`, secret);
      if (res.status === 204 || res.status === 404 || res.ok) return;
      throw await failure(res, "deregistration");
    },
    async health() {
      try {
        const res = await fetchFn(`${base}/healthz`, { signal: AbortSignal.timeout(timeoutMs) });
        return res.ok;
      } catch {
        return false;
      }
    },
  };
}

/** Exponential backoff with jitter: 0.5 s, 1 s, 2 s … capped at `maxMs`. */
export function backoffDelay(attempt: number, maxMs = 30_000, random: () => number = Math.random): number {
  const base = Math.min(maxMs, 500 * 2 ** attempt);
  return Math.round(base / 2 + (base / 2) * random());
}
