import { Router, type Request, type RequestHandler } from "express";
import type { SessionService } from "../sessionService.js";

/** `/renter/*` and `/access/:token`: listing, connect, renter heartbeat, release, hand-in. */
export function createRenterRoutes(deps: {
  sessions: SessionService;
  clientIp: (req: Request) => string;
  isHttps: (req: Request) => boolean;
  renterLimiter: RequestHandler;
}): Router {
  const router = Router();
  const { sessions, clientIp } = deps;
  const noStore: RequestHandler = (_req, res, next) => {
    res.setHeader("Cache-Control", "no-store");
    next();
  };
  router.use(["/renter/sessions", "/renter/heartbeat", "/renter/release", "/access"], deps.renterLimiter, noStore);
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
    const redirect = sessions.access(String(req.params.accessToken), clientIp(req), deps.isHttps(req));
    if (redirect.cookie) res.setHeader("Set-Cookie", redirect.cookie);
    res.redirect(302, redirect.location);
  });
  return router;
}
