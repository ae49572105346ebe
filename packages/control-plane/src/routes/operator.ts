import { RunitError } from "@runit/protocol";
import { Router } from "express";
import { sendError } from "../httpErrors.js";
import type { Metrics } from "../metrics.js";
import { bearerToken, sameSecret } from "../secretTokens.js";
import type { RunitDatabase } from "../store/database.js";

/** `GET /`, `GET /healthz` and `GET /metrics` (operator bearer token). */
export function createOperatorRoutes(deps: { store: RunitDatabase; metrics: Metrics; adminToken: string | undefined }): Router {
  const router = Router();
  router.get("/", (_req, res) => {
    res.type("text/plain").send("RUNIT control plane running ✅");
  });
  router.get("/healthz", (_req, res) => {
    res.setHeader("Cache-Control", "no-store");
    if (deps.store.healthy()) res.json({ status: "ok" });
    else res.status(503).json({ status: "unavailable" });
  });
  router.get("/metrics", async (req, res) => {
    const token = bearerToken(req.headers.authorization);
    // No configured token means nobody may scrape: never an open /metrics by accident.
    if (!deps.adminToken || !token || !sameSecret(token, deps.adminToken)) {
      res.setHeader("WWW-Authenticate", 'Bearer realm="runit-metrics"');
      return sendError(res, new RunitError("ADMIN_TOKEN_REQUIRED"));
    }
    res.type(deps.metrics.registry.contentType).send(await deps.metrics.registry.metrics());
  });
  return router;
}
