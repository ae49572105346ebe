import { Router, type Request, type RequestHandler } from "express";
import type { SessionService } from "../sessionService.js";

/** `/renter/*` and `/access/:token`: listing, connect, renter heartbeat, release, hand-in. */
export function createRenterRoutes(deps: {
  sessions: SessionService;
  clientIp: (req: Request) => string;
  isHttps: (req: Request) => boolean;
  /** The session whose own host a request came to (per-session origins), or undefined. */
  sessionHost: (req: Request) => string | undefined;
  renterLimiter: RequestHandler;
  /** Renter heartbeat and release: the same numbers, a budget of their own (see RouteClass). */
  lockLimiter: RequestHandler;
}): Router {
  const router = Router();
  const { sessions, clientIp } = deps;
  const noStore: RequestHandler = (_req, res, next) => {
    res.setHeader("Cache-Control", "no-store");
    next();
  };
  router.use(["/renter/sessions", "/access"], deps.renterLimiter, noStore);
  router.use(["/renter/heartbeat", "/renter/release"], deps.lockLimiter, noStore);
  router.get("/renter/sessions", (_req, res) => {
    res.json(sessions.listForRenters());
  });
  router.post("/renter/sessions/:id/connect", (req, res) => {
    res.status(201).json(sessions.connect(String(req.params.id), clientIp(req)));
  });
  router.post("/renter/heartbeat/:accessToken", (req, res) => {
    res.json(sessions.renterHeartbeat(String(req.params.accessToken), clientIp(req)));
  });
  router.post("/renter/release/:accessToken", (req, res) => {
    res.json(sessions.release(String(req.params.accessToken), clientIp(req)));
  });
  router.get("/access/:accessToken", (req, res) => {
    const redirect = sessions.access(String(req.params.accessToken), clientIp(req), deps.isHttps(req), deps.sessionHost(req));
    if (redirect.cookie) res.setHeader("Set-Cookie", redirect.cookie);
    if (!redirect.viaPage) return void res.redirect(302, redirect.location);
    // The session's own page moves the tab on, so the next request is one the session's site
    // started and carries the SameSite=Strict cookie. No script: a refresh and a link.
    res
      .status(200)
      .set({ "Content-Security-Policy": "default-src 'none'", "Referrer-Policy": "no-referrer" })
      .type("html")
      .send(
        `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${redirect.location}">` +
          `<title>Opening your RUNIT session</title></head><body><p><a href="${redirect.location}">Open your session</a></p></body></html>`,
      );
  });
  return router;
}
