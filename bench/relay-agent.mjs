/* global process */
// The agent's relay tunnel on its own, in its own process, for the benchmark: attaches to a
// control plane and a Jupyter given in the environment (never argv, so no secret shows in ps).
import { createRelayTunnel, tuneGcForRelay } from "@runit/agent";

tuneGcForRelay(); // as the agent CLI does

const env = process.env;
const tunnel = createRelayTunnel({ logger: { info: () => undefined, error: (l) => process.stderr.write(`${l}\n`) } });
await tunnel.attach({
  serverUrl: env.BENCH_SERVER_URL,
  sessionId: env.BENCH_SESSION_ID,
  sessionSecret: env.BENCH_SESSION_SECRET,
  // BENCH_JUPYTER_SOCKET: the pinned link to Jupyter's Unix socket, as the agent uses in relay mode.
  jupyter: env.BENCH_JUPYTER_SOCKET ? { kind: "socket", path: env.BENCH_JUPYTER_SOCKET } : { kind: "tcp", port: Number(env.BENCH_JUPYTER_PORT) },
  jupyterToken: env.BENCH_JUPYTER_TOKEN,
  basePath: `/s/${env.BENCH_SESSION_ID}/`,
});
await tunnel.waitConnected(10_000);
process.stdout.write("relay tunnel connected\n");
process.on("SIGTERM", () => void tunnel.close().then(() => process.exit(0)));
