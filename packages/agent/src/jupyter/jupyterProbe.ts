import { JupyterKernelsSchema, JupyterStatusSchema, type Secret } from "@runit/protocol";
import { NotASocketError, jupyterGetJson, pinJupyterSocket, type JupyterEndpoint, type SessionSocketPaths } from "./jupyterEndpoint.js";

/** Jupyter's own view of its activity. */
export interface JupyterActivity {
  /** Jupyter's last_activity (ISO), moved by API use, kernel messages and terminals. */
  lastActivity: string;
  /** Open kernel/terminal WebSocket connections. */
  connections: number;
  /** True when a kernel is executing. */
  busy: boolean;
}

/**
 * Reads activity without creating any: /api/status does not track activity, and
 * `no_track_activity=1` keeps /api/kernels from counting as use.
 */
export async function readJupyterActivity(endpoint: JupyterEndpoint, basePath: string, token: Secret): Promise<JupyterActivity> {
  const status = JupyterStatusSchema.parse(await jupyterGetJson(endpoint, `${basePath}api/status`, token, 5000));
  const kernels = JupyterKernelsSchema.parse(await jupyterGetJson(endpoint, `${basePath}api/kernels?no_track_activity=1`, token, 5000));
  return {
    lastActivity: status.last_activity,
    connections: status.connections,
    busy: kernels.some((k) => k.execution_state === "busy"),
  };
}

/**
 * Waits until Jupyter answers /api/status with the token; throws after `timeoutMs`. With
 * `socket`, first waits for Jupyter to bind its socket and pins it (see jupyterEndpoint.ts): the
 * endpoint is then `socket.link`, and anything but a socket under the socket's name fails at once.
 */
export async function waitForJupyter(
  endpoint: JupyterEndpoint,
  basePath: string,
  token: Secret,
  timeoutMs = 60_000,
  isAlive: () => Promise<boolean> = async () => true,
  socket?: SessionSocketPaths,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = "";
  let pinned = socket === undefined;
  for (let attempt = 0; Date.now() < deadline && attempt < 10_000; attempt++) {
    try {
      if (!pinned && socket) pinned = await pinJupyterSocket(socket);
      if (!pinned) throw new Error("its socket is not there yet");
      await jupyterGetJson(endpoint, `${basePath}api/status`, token, 2000);
      return;
    } catch (err) {
      if (err instanceof NotASocketError) throw err;
      lastError = (err as Error).message;
    }
    if (!(await isAlive())) throw new Error("the Jupyter container stopped before it was ready");
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`Jupyter did not become ready within ${Math.round(timeoutMs / 1000)} s (${lastError})`);
}
