import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { RunitError } from "@runit/protocol";
import cors from "cors";
import express, { type Express, type Request, type RequestHandler } from "express";
import helmet from "helmet";
import { isHttpsRequest, resolveClientIp } from "./clientIp.js";
import { systemClock, type Clock } from "./clock.js";
import type { ServerConfig } from "./config.js";
import { errorHandler, notFound, sendError } from "./httpErrors.js";
import { createLogger, type LineWriter, type Logger } from "./logger.js";
import { createMetrics, type Metrics } from "./metrics.js";
import { createRateLimiter, type RouteClass } from "./rateLimits.js";
import { originPolicy, type OriginAllowed } from "./originPolicy.js";
import { createRenterPageRouter } from "./renterPage.js";
import { createOperatorRoutes } from "./routes/operator.js";
import { createProviderRoutes } from "./routes/provider.js";
import { createRenterRoutes } from "./routes/renter.js";
import { createSecurityLog, type SecurityLog } from "./securityLog.js";
import { sessionHostOf } from "./sessionOrigin.js";
import { SessionService } from "./sessionService.js";
import { SessionStore } from "./store/sessionStore.js";
import type { RunitDatabase } from "./store/database.js";

/** What the relay gets from the control plane when it is plugged in. */
export interface RelayContext {
  sessions: SessionService;
  /** The client address of a request (socket address unless RUNIT_TRUST_PROXY says otherwise). */
  clientIp(req: IncomingMessage): string;
  logger: Logger;
  securityLog: SecurityLog;
  /** Whether an `Origin` may act on a request sent to `host` (its own host, RUNIT_CORS_ORIGINS). */
  originAllowed: OriginAllowed;
}

/** The relay, as the control plane mounts it: HTTP at `/s/:sessionId`, upgrades, and shutdown. */
export interface RelayPlugin {
  /** Mounted at `/s/:sessionId`, ahead of helmet, CORS and the JSON parser (bodies arrive unread). */
  handleHttp: RequestHandler;
  /** Optional fast path ahead of Express: serves `/s/<id>/...` and returns true, or false to let Express route it. */
  handleRequest?(req: IncomingMessage, res: ServerResponse): boolean;
  /** Offered every WebSocket upgrade; returns true when it took the socket. */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean;
  close(): Promise<void>;
}

/** Builds the relay from the control plane's context. */
export type RelayFactory = (ctx: RelayContext) => RelayPlugin;

/** Dependencies of `createApp`. Only `config` and `store` are required. */
export interface AppDeps {
  config: ServerConfig;
  store: RunitDatabase;
  clock?: Clock;
  /** Where the security log and info lines go (default process.stdout). */
  stdout?: LineWriter;
  stderr?: LineWriter;
  relay?: RelayFactory;
}

/** The Express app and the objects behind it. */
export interface RunitApp extends RelayContext {
  app: Express;
  metrics: Metrics;
  relay: RelayPlugin | undefined;
}

/** Builds the control plane's Express app (no listen): security middleware, routes, errors. */
export function createApp(deps: AppDeps): RunitApp {
  const { config, store } = deps;
  const clock = deps.clock ?? systemClock;
  const logger = createLogger({ stdout: deps.stdout ?? process.stdout, stderr: deps.stderr ?? process.stderr });
  const sessionRows = new SessionStore(store);
  const metrics = createMetrics(() => (store.db.open ? sessionRows.countByStatus() : undefined));
  const securityLog = createSecurityLog({
    writer: deps.stdout ?? process.stdout,
    store,
    clock,
    onEvent: metrics.countSecurityEvent,
  });
  const sessions = new SessionService({ store, clock, securityLog, config });
  const clientIp = (req: IncomingMessage): string => resolveClientIp(req, config.trustProxy);
  const originAllowed = originPolicy(config.corsOrigins);
  const ctx: RelayContext = { sessions, clientIp, logger, securityLog, originAllowed };
  const relay = deps.relay?.(ctx);

  const app = express();
  app.set("trust proxy", false);
  app.set("etag", false);
  app.use((req, res, next) => {
    res.on("finish", () => metrics.httpRequests.inc({ method: req.method, status: String(res.statusCode) }));
    next();
  });
  if (relay) app.use("/s/:sessionId", relay.handleHttp);
  app.use(helmetForOurPages());
  app.use(corsFor(config.corsOrigins, originAllowed, securityLog, clientIp));
  app.use(express.json({ limit: config.maxJsonBodyBytes, strict: true }));

  const limiter = (routeClass: RouteClass) =>
    createRateLimiter({
      routeClass,
      setting: config.rateLimits[routeClass === "renter-lock" ? "renter" : routeClass],
      clientIp,
      securityLog,
      onLimited: (c) => metrics.rateLimited.inc({ class: c }),
    });
  app.use(createOperatorRoutes({ store, metrics, adminToken: config.adminToken }));
  app.use(
    createProviderRoutes({
      sessions,
      clientIp,
      registrationLimiter: limiter("registration"),
      providerLimiter: limiter("provider"),
    }),
  );
  app.use(
    createRenterRoutes({
      sessions,
      clientIp,
      isHttps: (req) => isHttpsRequest(req, config.trustProxy),
      sessionHost: (req) => (config.sessionOrigin ? sessionHostOf(config.sessionOrigin, req) : undefined),
      renterLimiter: limiter("renter"),
      lockLimiter: limiter("renter-lock"),
    }),
  );
  app.use(createRenterPageRouter());
  app.use(notFound);
  app.use(errorHandler({ logger, store }));
  return { app, metrics, relay, ...ctx };
}

/** helmet with a CSP for our own pages: our scripts and styles only, nothing inline, no framing. */
function helmetForOurPages(): RequestHandler {
  return helmet({
    contentSecurityPolicy: {
      useDefaults: false,
      directives: {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
      },
    },
  });
}

/**
 * CORS for RUNIT_CORS_ORIGINS only. A state-changing request whose Origin is neither listed nor
 * our own host is refused outright (403 CORS_ORIGIN_DENIED): a browser would send it anyway and
 * only hide the reply, so headers alone do not stop cross-site POSTs.
 */
function corsFor(
  origins: readonly string[],
  originAllowed: OriginAllowed,
  securityLog: SecurityLog,
  clientIp: (req: IncomingMessage) => string,
): RequestHandler {
  const allowed = new Set(origins);
  const corsHandler = cors({
    origin: (origin, callback) => callback(null, origin !== undefined && allowed.has(origin)),
    methods: ["GET", "POST", "DELETE"],
    allowedHeaders: ["Content-Type", "Authorization"],
    maxAge: 600,
  });
  return (req: Request, res, next) => {
    const origin = req.headers.origin;
    const unsafe = !["GET", "HEAD", "OPTIONS"].includes(req.method);
    if (origin !== undefined && unsafe && !originAllowed(origin, req.headers.host)) {
      securityLog("CORS_ORIGIN_DENIED", { ip: clientIp(req), origin: origin.slice(0, 200), method: req.method });
      return sendError(res, new RunitError("CORS_ORIGIN_DENIED"));
    }
    corsHandler(req, res, next);
  };
}
