import { z } from "zod";

/**
 * Every error the control plane can answer with. Adding a code without a status or a message
 * does not compile: both maps below are exhaustive Records.
 */
export const ERROR_CODES = [
  "INVALID_JSON",
  "INVALID_BODY",
  "BODY_TOO_LARGE",
  "INVALID_PROVIDER_KEY",
  "INVALID_SESSION_SECRET",
  "ADMIN_TOKEN_REQUIRED",
  "INVALID_PROVIDER_URL",
  "SESSION_ID_TAKEN",
  "SESSION_NOT_FOUND",
  "NOT_FOUND",
  "SESSION_ALREADY_LOCKED",
  "SESSION_UNAVAILABLE",
  "IP_MISMATCH",
  "INVALID_ACCESS_TOKEN",
  "LOCK_REQUIRED",
  "CORS_ORIGIN_DENIED",
  "RATE_LIMITED",
  "BANDWIDTH_EXCEEDED",
  "TUNNEL_UNAVAILABLE",
  "UPSTREAM_TIMEOUT",
  "STORE_UNAVAILABLE",
  "INTERNAL",
] as const;

/** A stable, SCREAMING_SNAKE error code. */
export type ErrorCode = (typeof ERROR_CODES)[number];

/** The HTTP status each code is answered with. */
export const ERROR_STATUS: Record<ErrorCode, number> = {
  INVALID_JSON: 400,
  INVALID_BODY: 400,
  BODY_TOO_LARGE: 413,
  INVALID_PROVIDER_KEY: 401,
  INVALID_SESSION_SECRET: 401,
  ADMIN_TOKEN_REQUIRED: 401,
  INVALID_PROVIDER_URL: 400,
  SESSION_ID_TAKEN: 409,
  SESSION_NOT_FOUND: 404,
  NOT_FOUND: 404,
  SESSION_ALREADY_LOCKED: 409,
  SESSION_UNAVAILABLE: 409,
  IP_MISMATCH: 403,
  INVALID_ACCESS_TOKEN: 403,
  LOCK_REQUIRED: 403,
  CORS_ORIGIN_DENIED: 403,
  RATE_LIMITED: 429,
  BANDWIDTH_EXCEEDED: 403,
  TUNNEL_UNAVAILABLE: 502,
  UPSTREAM_TIMEOUT: 504,
  STORE_UNAVAILABLE: 503,
  INTERNAL: 500,
};

/**
 * The default message of each code. The quoted messages of api.md ("Session already in use",
 * "IP mismatch - access denied", "Invalid or expired token") are part of the public contract.
 */
export const ERROR_MESSAGES: Record<ErrorCode, string> = {
  INVALID_JSON: "Malformed JSON body",
  INVALID_BODY: "Invalid request body",
  BODY_TOO_LARGE: "Request body too large",
  INVALID_PROVIDER_KEY: "Invalid provider key",
  INVALID_SESSION_SECRET: "Invalid session secret",
  ADMIN_TOKEN_REQUIRED: "Operator token required",
  INVALID_PROVIDER_URL: "Invalid provider URL",
  SESSION_ID_TAKEN: "Session id already registered",
  SESSION_NOT_FOUND: "Session not found",
  NOT_FOUND: "Not found",
  SESSION_ALREADY_LOCKED: "Session already in use",
  SESSION_UNAVAILABLE: "Session is not available",
  IP_MISMATCH: "IP mismatch - access denied",
  INVALID_ACCESS_TOKEN: "Invalid or expired token",
  LOCK_REQUIRED: "This session is locked to another renter",
  CORS_ORIGIN_DENIED: "Origin not allowed",
  RATE_LIMITED: "Too many requests, please try again later",
  BANDWIDTH_EXCEEDED: "Bandwidth limit exceeded",
  TUNNEL_UNAVAILABLE: "The provider is not reachable right now",
  UPSTREAM_TIMEOUT: "Jupyter did not answer in time",
  STORE_UNAVAILABLE: "Store unavailable",
  INTERNAL: "Internal error",
};

/** The body of every error response: `{"error": "<message>", "code": "<CODE>"}`. */
export const ErrorBodySchema = z.object({
  error: z.string(),
  code: z.enum(ERROR_CODES),
  /** For INVALID_BODY: the path of the first offending field, e.g. `hardware.cpus`. */
  path: z.string().optional(),
  /** For RATE_LIMITED: seconds until the client may try again. */
  retryAfterSeconds: z.number().optional(),
});
export type ErrorBody = z.infer<typeof ErrorBodySchema>;

/** The one error class of RUNIT. `message` is safe to show a user; `cause` never is. */
export class RunitError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly path: string | undefined;

  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown; path?: string }) {
    super(message ?? ERROR_MESSAGES[code], { cause: options?.cause });
    this.name = "RunitError";
    this.code = code;
    this.status = ERROR_STATUS[code];
    this.path = options?.path;
  }

  /** The JSON body for this error. */
  toBody(): ErrorBody {
    const body: ErrorBody = { error: this.message, code: this.code };
    if (this.path !== undefined) body.path = this.path;
    return body;
  }
}

/** Turns any thrown value into a RunitError; unknown values become INTERNAL, their text hidden. */
export function toRunitError(err: unknown): RunitError {
  if (err instanceof RunitError) return err;
  return new RunitError("INTERNAL", undefined, { cause: err });
}

/**
 * Formats a zod issue list as `path: message` for the first issue, with the path dotted
 * (`hardware.gpus.0.name: expected string, got number`).
 */
export function describeZodError(error: z.ZodError): { path: string; message: string } {
  const issue = error.issues[0];
  if (!issue) return { path: "", message: "invalid input" };
  const path = issue.path.map(String).join(".");
  return { path, message: path ? `${path}: ${issue.message}` : issue.message };
}

/** Parses `input` with `schema` or throws INVALID_BODY naming the field path. */
export function parseOrThrow<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const { path, message } = describeZodError(result.error);
  throw new RunitError("INVALID_BODY", message, { path });
}
