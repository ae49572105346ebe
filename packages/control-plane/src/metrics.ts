import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";
import type { SecurityEvent, SessionStatus } from "@runit/protocol";

/** Prometheus metrics of one control plane (its own registry, so tests can run several). */
export interface Metrics {
  registry: Registry;
  httpRequests: Counter<"method" | "status">;
  securityEvents: Counter<"event">;
  rateLimited: Counter<"class">;
  countSecurityEvent(event: SecurityEvent): void;
}

/** Builds the registry; `sessionCounts` is read at scrape time for the `runit_sessions` gauge. */
export function createMetrics(sessionCounts: () => Record<SessionStatus, number> | undefined): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "runit_process_" });
  const httpRequests = new Counter({
    name: "runit_http_requests_total",
    help: "HTTP requests answered, by method and status",
    labelNames: ["method", "status"] as const,
    registers: [registry],
  });
  const securityEvents = new Counter({
    name: "runit_security_events_total",
    help: "Security events logged, by event",
    labelNames: ["event"] as const,
    registers: [registry],
  });
  const rateLimited = new Counter({
    name: "runit_rate_limited_total",
    help: "Requests refused with 429, by route class",
    labelNames: ["class"] as const,
    registers: [registry],
  });
  new Gauge({
    name: "runit_sessions",
    help: "Sessions by status",
    labelNames: ["status"] as const,
    registers: [registry],
    collect() {
      const counts = sessionCounts();
      if (!counts) return;
      for (const [status, n] of Object.entries(counts)) this.set({ status }, n);
    },
  });
  return {
    registry,
    httpRequests,
    securityEvents,
    rateLimited,
    countSecurityEvent: (event) => securityEvents.inc({ event }),
  };
}
