import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { createApp, type RelayFactory, type RunitApp } from "./app.js";
import { systemClock, type Clock } from "./clock.js";
import { loadConfig, type ServerConfig } from "./config.js";
import type { LineWriter } from "./logger.js";
import { sessionHostGate } from "./sessionOrigin.js";
import { RunitDatabase } from "./store/database.js";

/** Options of `startServer`. Anything not given comes from the environment (`loadConfig`). */
export interface StartServerOptions {
  /** Overrides on top of `loadConfig(env)`; `port: 0` picks a free port. */
  config?: Partial<ServerConfig>;
  env?: Record<string, string | undefined>;
  clock?: Clock;
  stdout?: LineWriter;
  stderr?: LineWriter;
  relay?: RelayFactory;
  /** Install SIGTERM/SIGINT handlers that drain and close (the CLI does; tests do not). */
  handleSignals?: boolean;
  /** Run `sweep()` every sweepIntervalMs (default true). */
  sweepTimer?: boolean;
}

/** A running control plane. */
export interface RunningServer extends RunitApp {
  url: string;
  port: number;
  server: Server;
  store: RunitDatabase;
  config: ServerConfig;
  /** One pass of the session timers (the server also runs it every sweepIntervalMs). */
  sweep(): { ended: string[] };
  /** Stops accepting, drains in-flight requests (up to shutdownDrainMs), closes relay and store. */
  close(): Promise<void>;
}

/** Opens the store, builds the app, listens, and logs `RUNIT server listening on port <port>`. */
export async function startServer(options: StartServerOptions = {}): Promise<RunningServer> {
  const config: ServerConfig = { ...loadConfig(options.env ?? process.env), ...options.config };
  const clock = options.clock ?? systemClock;
  const store = RunitDatabase.open(config.dbPath, () => clock.now());
  let runit: RunitApp;
  try {
    runit = createApp({
      config,
      store,
      clock,
      stdout: options.stdout,
      stderr: options.stderr,
      relay: options.relay,
    });
  } catch (err) {
    store.close();
    throw err;
  }
  // The relay's fast path: renter traffic on /s/<id>/... skips Express (its routing cost is most
  // of a small relayed request's control-plane time); everything else goes to the app.
  const relayFast = runit.relay?.handleRequest?.bind(runit.relay);
  const hostGate = config.sessionOrigin ? sessionHostGate(config.sessionOrigin) : undefined;
  const server = createServer((req, res) => {
    if (relayFast || hostGate) {
      // What is answered ahead of the app is counted as the app counts its own (its first middleware).
      const count = (): void => runit.metrics.httpRequests.inc({ method: req.method ?? "", status: String(res.statusCode) });
      res.once("finish", count);
      if (hostGate?.request(req, res) || relayFast?.(req, res)) return;
      res.off("finish", count);
    }
    void runit.app(req, res);
  });
  server.on("upgrade", (req, socket, head) => {
    // A reset socket must not crash the process before (or after) someone takes it.
    socket.on("error", () => socket.destroy());
    let taken = false;
    try {
      const allowed = hostGate?.allowsUpgrade(req) ?? true;
      taken = allowed && (runit.relay?.handleUpgrade(req, socket, head) ?? false);
    } catch (err) {
      // A throwing relay refuses this one upgrade; it never takes the whole server down.
      runit.logger.warn(`upgrade refused: ${err instanceof Error ? err.message : String(err)}`);
      if (!socket.destroyed) socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    if (!taken) socket.end("HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
  });
  server.on("clientError", (_err, socket) => {
    if (socket.writable) socket.end("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n");
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(config.port, config.host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  runit.logger.info(`RUNIT server listening on port ${port}`);

  const sweep = () => {
    try {
      return runit.sessions.sweep();
    } catch (err) {
      runit.logger.error(`sweep failed: ${err instanceof Error ? err.message : String(err)}`);
      return { ended: [] };
    }
  };
  const timer = options.sweepTimer === false ? undefined : setInterval(sweep, config.sweepIntervalMs);
  timer?.unref();

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      if (timer) clearInterval(timer);
      const drained = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      const deadline = setTimeout(() => server.closeAllConnections(), config.shutdownDrainMs);
      deadline.unref();
      await runit.relay?.close();
      await drained;
      clearTimeout(deadline);
      runit.sessions.flush();
      store.close();
    })();
    return closing;
  };

  if (options.handleSignals) {
    const onSignal = (signal: NodeJS.Signals) => {
      runit.logger.info(`received ${signal}, draining`);
      void close().then(() => runit.logger.info("RUNIT server closed"));
    };
    process.once("SIGTERM", onSignal);
    process.once("SIGINT", onSignal);
  }

  const hostForUrl = !config.host || config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host;
  return { ...runit, url: `http://${hostForUrl.includes(":") ? `[${hostForUrl}]` : hostForUrl}:${port}`, port, server, store, config, sweep, close };
}
