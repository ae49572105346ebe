import type { IncomingMessage, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { AGENT_TUNNEL_PATH, DEFAULT_STREAM_WINDOW_BYTES, toRunitError } from "@runit/protocol";
import { DEFAULT_RELAY_RESPONSE_TIMEOUT_MS } from "../config.js";
import { checkResponseParser } from "./jupyterConnections.js";
import { RelayMeter } from "./relayMeter.js";
import { RenterRelay } from "./renterRelay.js";
import { TunnelHub } from "./tunnelHub.js";
import type { RelayContext, RelayOptions, RelayPlugin } from "./types.js";

export type { RelayContext, RelayOptions, RelayPlugin, RelaySessions, RelayStats } from "./types.js";

const DEFAULT_PING_INTERVAL_MS = 15_000;
const DEFAULT_METER_FLUSH_MS = 250;
const DEFAULT_METER_FLUSH_BYTES = 256 * 1024;

/**
 * The built-in relay (issue 4). Renter traffic for `/s/<id>/...` is carried over the one
 * WebSocket that the session's agent dialled to `/agent/tunnel`; every request is authorized
 * against the lock (cookie + locking IP) and metered towards the session's bandwidth cap.
 */
export function createRelay(ctx: RelayContext, options: RelayOptions = {}): RelayPlugin {
  checkResponseParser();
  const meter: RelayMeter = new RelayMeter(
    ctx.sessions,
    (sessionId) => {
      ctx.logger.warn(`[relay] bandwidth cap reached: ${sessionId}`);
      hub.endSession(sessionId, "BANDWIDTH_EXCEEDED", "Bandwidth limit exceeded");
    },
    (err) => ctx.logger.warn(`[relay] could not record relay traffic: ${toRunitError(err).message}`),
    options.meterFlushBytes ?? DEFAULT_METER_FLUSH_BYTES,
    options.meterFlushMs ?? DEFAULT_METER_FLUSH_MS,
  );
  const hub = new TunnelHub(
    ctx,
    options.pingIntervalMs ?? DEFAULT_PING_INTERVAL_MS,
    options.streamWindowBytes ?? DEFAULT_STREAM_WINDOW_BYTES,
    (sessionId) => ({
      onSent: (bytes) => meter.addRx(sessionId, bytes),
      onReceived: (bytes) => meter.addTx(sessionId, bytes),
    }),
    options.helloTimeoutMs,
  );
  const renter = new RenterRelay(ctx, hub, meter, options.responseTimeoutMs ?? DEFAULT_RELAY_RESPONSE_TIMEOUT_MS);
  const unsubscribe = ctx.sessions.onSessionEnded((sessionId, reason) => {
    hub.endSession(sessionId, reason === "BANDWIDTH_EXCEEDED" ? "BANDWIDTH_EXCEEDED" : "TUNNEL_CLOSED", `session ended (${reason})`);
  });

  return {
    handleHttp: (req, res) => renter.handleHttp(req, res),
    handleRequest(req: IncomingMessage, res: ServerResponse): boolean {
      if (!renter.claims(req.url ?? "")) return false;
      renter.handleHttp(req, res);
      return true;
    },
    handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): boolean {
      const path = (req.url ?? "").split("?")[0];
      if (path === AGENT_TUNNEL_PATH) {
        hub.handleUpgrade(req, socket, head);
        return true;
      }
      return renter.handleUpgrade(req, socket, head);
    },
    async close(): Promise<void> {
      unsubscribe();
      meter.close();
      await hub.close();
    },
    stats: () => hub.counts(),
  };
}
