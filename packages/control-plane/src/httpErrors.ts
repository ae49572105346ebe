import type { ServerResponse } from "node:http";
import { RunitError, toRunitError } from "@runit/protocol";
import type { ErrorRequestHandler, RequestHandler, Response } from "express";
import type { Logger } from "./logger.js";
import type { RunitDatabase } from "./store/database.js";

/** Sends `err` as `{"error", "code"[, "path"]}` with its status. */
export function sendError(res: Response, err: RunitError): void {
  if (res.headersSent) return;
  res.status(err.status).json(err.toBody());
}

/** `sendError` for a plain Node response: what is answered ahead of Express (relay, host split). */
export function writeJsonError(res: ServerResponse, err: RunitError): void {
  res
    .writeHead(err.status, { "Content-Type": "application/json; charset=utf-8", "X-Content-Type-Options": "nosniff" })
    .end(JSON.stringify(err.toBody()));
}

/** The 404 of every unknown route: JSON, like every other error. */
export const notFound: RequestHandler = (_req, res) => sendError(res, new RunitError("NOT_FOUND"));

interface HttpLikeError {
  type?: unknown;
  status?: unknown;
  statusCode?: unknown;
}

/** Turns body-parser and router errors (which carry a status and a type) into RunitErrors. */
function fromHttpError(err: unknown): RunitError | undefined {
  if (err instanceof URIError) return new RunitError("INVALID_BODY", "Malformed percent-encoding in the URL");
  if (typeof err !== "object" || err === null) return undefined;
  const { type, status, statusCode } = err as HttpLikeError;
  if (type === "entity.parse.failed") return new RunitError("INVALID_JSON");
  if (type === "entity.too.large") return new RunitError("BODY_TOO_LARGE");
  const code = typeof status === "number" ? status : typeof statusCode === "number" ? statusCode : undefined;
  if (code === undefined || code < 400 || code > 499) return undefined;
  if (code === 404) return new RunitError("NOT_FOUND");
  if (code === 413) return new RunitError("BODY_TOO_LARGE");
  return new RunitError("INVALID_BODY", typeof type === "string" ? `Invalid request (${type})` : undefined);
}

/**
 * The last handler: every error becomes a JSON error body. Client mistakes are 4xx; a store that
 * is closed or failing is 503; anything else is logged (message only) and answered 500 without
 * a stack trace.
 */
export function errorHandler(deps: { logger: Logger; store: RunitDatabase }): ErrorRequestHandler {
  return (err: unknown, _req, res, _next) => {
    const known = err instanceof RunitError ? err : fromHttpError(err);
    if (known) return sendError(res, known);
    if (!deps.store.healthy()) return sendError(res, new RunitError("STORE_UNAVAILABLE"));
    const internal = toRunitError(err);
    deps.logger.error(`unhandled error: ${err instanceof Error ? err.message : String(err)}`);
    sendError(res, internal);
  };
}
