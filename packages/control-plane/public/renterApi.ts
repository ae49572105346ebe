// The renter API as the renter page sees it (api.md): typed calls, replies checked by hand (the
// page loads no zod), and every failure turned into an ApiError the page can explain.

/** The renter heartbeat interval of @runit/protocol's DEFAULT_TIMERS (checked by e2e/browser tests). */
export const RENTER_HEARTBEAT_INTERVAL_MS = 15_000;

/** One GPU of a session's hardware. */
export interface Gpu {
  name: string;
  vramMb: number;
}

/** One row of `GET /renter/sessions`. */
export interface SessionRow {
  sessionId: string;
  status: "READY" | "LOCKED" | "ENDED";
  hardware: { cpus: number; memoryMb: number; gpus: Gpu[] };
  pricing: { hourlyUsd: number };
  createdAt: string;
  available?: boolean;
}

/** `POST /renter/sessions/:id/connect` 201 reply. */
export interface ConnectReply {
  accessToken: string;
  accessUrl: string;
  expiresAt: string;
}

/** What went wrong, in the terms the page explains to a person. */
export type FailureKind =
  | "in-use" // 409 Session already in use
  | "provider-gone" // 404 / 409 unavailable / 502 tunnel down
  | "ip-mismatch" // 403 IP mismatch - access denied
  | "lock-lost" // 403 Invalid or expired token
  | "rate-limited" // 429
  | "network" // no answer at all
  | "other";

/** A failed renter API call: `message` is the server's own text when it sent one. */
export class ApiError extends Error {
  readonly kind: FailureKind;
  readonly status: number;
  readonly code: string | undefined;
  /** For 429: seconds until the client may try again (Retry-After, RateLimit or the body). */
  readonly retryAfterSeconds: number | undefined;

  constructor(kind: FailureKind, status: number, message: string, code?: string, retryAfterSeconds?: number) {
    super(message);
    this.name = "ApiError";
    this.kind = kind;
    this.status = status;
    this.code = code;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

/** Seconds to wait after a 429, from Retry-After, then RateLimit / RateLimit-Reset, then the body. */
export function retryAfterSeconds(headers: Headers, body: unknown): number | undefined {
  const retryAfter = headers.get("retry-after");
  if (retryAfter !== null) {
    const seconds = Number(retryAfter);
    if (Number.isFinite(seconds) && seconds >= 0) return Math.ceil(seconds);
    const date = Date.parse(retryAfter);
    if (!Number.isNaN(date)) return Math.max(0, Math.ceil((date - Date.now()) / 1000));
  }
  // draft-7 `RateLimit: limit=120, remaining=0, reset=42`; draft-8 `RateLimit: "renter";r=0;t=42`;
  // draft-6 `RateLimit-Reset: 42`.
  const combined = /(?:^|[,;\s])(?:reset|t)=(\d+)/i.exec(headers.get("ratelimit") ?? "");
  if (combined?.[1] !== undefined) return Number(combined[1]);
  const reset = Number(headers.get("ratelimit-reset") ?? Number.NaN);
  if (Number.isFinite(reset) && reset >= 0) return Math.ceil(reset);
  if (isRecord(body) && typeof body.retryAfterSeconds === "number") return Math.ceil(body.retryAfterSeconds);
  return undefined;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function classify(status: number, code: string | undefined): FailureKind {
  if (status === 429) return "rate-limited";
  if (code === "SESSION_ALREADY_LOCKED") return "in-use";
  if (code === "IP_MISMATCH") return "ip-mismatch";
  if (code === "INVALID_ACCESS_TOKEN") return "lock-lost";
  if (code === "SESSION_NOT_FOUND" || code === "SESSION_UNAVAILABLE" || code === "TUNNEL_UNAVAILABLE") {
    return "provider-gone";
  }
  if (status === 404 || status === 502) return "provider-gone";
  return "other";
}

async function call(method: "GET" | "POST", path: string): Promise<unknown> {
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: { accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError("network", 0, "The control plane did not answer. Check your connection.");
  }
  const body: unknown = await response.json().catch(() => undefined);
  if (response.ok) return body;
  const code = isRecord(body) && typeof body.code === "string" ? body.code : undefined;
  const message = isRecord(body) && typeof body.error === "string" ? body.error : `HTTP ${response.status}`;
  const wait = response.status === 429 ? retryAfterSeconds(response.headers, body) : undefined;
  throw new ApiError(classify(response.status, code), response.status, message, code, wait);
}

function badReply(path: string): ApiError {
  return new ApiError("other", 200, `Unexpected reply from ${path}`);
}

function isSessionRow(value: unknown): value is SessionRow {
  if (!isRecord(value) || typeof value.sessionId !== "string" || typeof value.status !== "string") return false;
  const hw = value.hardware;
  const price = value.pricing;
  return (
    isRecord(hw) &&
    typeof hw.cpus === "number" &&
    typeof hw.memoryMb === "number" &&
    Array.isArray(hw.gpus) &&
    isRecord(price) &&
    typeof price.hourlyUsd === "number"
  );
}

/** `GET /renter/sessions`. */
export async function listSessions(): Promise<SessionRow[]> {
  const body = await call("GET", "/renter/sessions");
  if (!Array.isArray(body)) throw badReply("/renter/sessions");
  return body.filter(isSessionRow);
}

/** `POST /renter/sessions/:id/connect`: locks the session to this renter. */
export async function connect(sessionId: string): Promise<ConnectReply> {
  const path = `/renter/sessions/${encodeURIComponent(sessionId)}/connect`;
  const body = await call("POST", path);
  if (
    !isRecord(body) ||
    typeof body.accessToken !== "string" ||
    typeof body.accessUrl !== "string" ||
    typeof body.expiresAt !== "string"
  ) {
    throw badReply(path);
  }
  return { accessToken: body.accessToken, accessUrl: body.accessUrl, expiresAt: body.expiresAt };
}

/** `POST /renter/heartbeat/:accessToken`: keeps the lock; returns when it would lapse (ms epoch). */
export async function heartbeat(accessToken: string): Promise<number> {
  const body = await call("POST", `/renter/heartbeat/${encodeURIComponent(accessToken)}`);
  const expires = isRecord(body) && typeof body.lockExpiresAt === "string" ? Date.parse(body.lockExpiresAt) : NaN;
  if (Number.isNaN(expires)) throw badReply("/renter/heartbeat");
  return expires;
}

/** `POST /renter/release/:accessToken`: ends the session; the provider offers a fresh one. */
export async function release(accessToken: string): Promise<void> {
  await call("POST", `/renter/release/${encodeURIComponent(accessToken)}`);
}
