import { RunitError } from "@runit/protocol";
import type { Request, RequestHandler } from "express";
import { ipKeyGenerator, rateLimit } from "express-rate-limit";
import type { RateLimitSetting } from "./config.js";
import type { SecurityLog } from "./securityLog.js";

/**
 * The rate-limited route classes. `renter-lock` (renter heartbeat and release) has the renter
 * class's numbers but a budget of its own: a page's list polling must never starve the heartbeat
 * that keeps its lock, or a 429 would end the session it is holding.
 */
export type RouteClass = "registration" | "provider" | "renter" | "renter-lock";

/**
 * A per-client-IP limiter for one route class, sending the IETF draft-8 `RateLimit` and
 * `RateLimit-Policy` headers. A limited request gets 429 with the error table's body; the first
 * one per client and window is logged as RATE_LIMIT_EXCEEDED (every one is counted in metrics).
 * The path is not logged: it may hold an access token.
 */
export function createRateLimiter(deps: {
  routeClass: RouteClass;
  setting: RateLimitSetting;
  clientIp: (req: Request) => string;
  securityLog: SecurityLog;
  onLimited?: (routeClass: RouteClass) => void;
}): RequestHandler {
  // One RATE_LIMIT_EXCEEDED per client and window: a flood of 429s must not flood the audit table.
  const loggedWindows = new Map<string, number>();
  return rateLimit({
    windowMs: deps.setting.windowMs,
    limit: deps.setting.max,
    standardHeaders: "draft-8",
    legacyHeaders: false,
    identifier: deps.routeClass,
    // Our own client-IP resolution (RUNIT_TRUST_PROXY), IPv6 grouped by /56 as the library advises.
    keyGenerator: (req) => ipKeyGenerator(deps.clientIp(req as Request)),
    // The library's checks look at Express's `trust proxy`, which we deliberately leave off.
    validate: false,
    handler: (req, res) => {
      const ip = deps.clientIp(req as Request);
      const resetTime = (req as Request & { rateLimit?: { resetTime?: Date } }).rateLimit?.resetTime;
      const windowEnd = resetTime?.getTime() ?? 0;
      if (loggedWindows.get(ip) !== windowEnd) {
        if (loggedWindows.size >= 10_000) loggedWindows.clear();
        loggedWindows.set(ip, windowEnd);
        deps.securityLog("RATE_LIMIT_EXCEEDED", { ip, routeClass: deps.routeClass, method: req.method });
      }
      deps.onLimited?.(deps.routeClass);
      const retryAfterSeconds = resetTime ? Math.max(1, Math.ceil((resetTime.getTime() - Date.now()) / 1000)) : undefined;
      const body = new RunitError("RATE_LIMITED").toBody();
      if (retryAfterSeconds !== undefined) {
        body.retryAfterSeconds = retryAfterSeconds;
        res.setHeader("Retry-After", String(retryAfterSeconds));
      }
      res.status(429).json(body);
    },
  });
}
