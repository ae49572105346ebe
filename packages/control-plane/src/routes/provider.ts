import { Router, type Request, type RequestHandler } from "express";
import { bearerToken } from "../secretTokens.js";
import type { SessionService } from "../sessionService.js";

/** `/provider/*`: registration (provider key) and heartbeats/status/deregistration (session secret). */
export function createProviderRoutes(deps: {
  sessions: SessionService;
  clientIp: (req: Request) => string;
  registrationLimiter: RequestHandler;
  providerLimiter: RequestHandler;
}): Router {
  const router = Router();
  const { sessions, clientIp } = deps;
  router.post("/provider/session", deps.registrationLimiter, (req, res) => {
    const reply = sessions.register(bearerToken(req.headers.authorization), req.body, clientIp(req));
    res.status(201).json(reply);
  });
  router.post("/provider/heartbeat", deps.providerLimiter, (req, res) => {
    res.json(sessions.providerHeartbeat(bearerToken(req.headers.authorization), req.body, clientIp(req)));
  });
  router.get("/provider/session/:id", deps.providerLimiter, (req, res) => {
    res.json(sessions.providerStatus(String(req.params.id), bearerToken(req.headers.authorization), clientIp(req)));
  });
  router.delete("/provider/session/:id", deps.providerLimiter, (req, res) => {
    sessions.deregister(String(req.params.id), bearerToken(req.headers.authorization), clientIp(req));
    res.status(204).end();
  });
  return router;
}
