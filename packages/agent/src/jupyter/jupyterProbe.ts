import { JupyterKernelsSchema, JupyterStatusSchema, type Secret } from "@runit/protocol";

/** The fetch the probes use (injected; tests may pass a fake). */
export type FetchLike = typeof fetch;

/** Jupyter's own view of its activity. */
export interface JupyterActivity {
  /** Jupyter's last_activity (ISO), moved by API use, kernel messages and terminals. */
  lastActivity: string;
  /** Open kernel/terminal WebSocket connections. */
  connections: number;
  /** True when a kernel is executing. */
  busy: boolean;
}

function apiUrl(port: number, basePath: string, path: string): string {
  return `http://127.0.0.1:${port}${basePath}${path}`;
}

async function getJson(fetchFn: FetchLike, url: string, token: Secret, timeoutMs: number): Promise<unknown> {
  const res = await fetchFn(url, {
    headers: { Authorization: `token ${token}` },
    signal: AbortSignal.timeout(timeoutMs),
  });
  if (!res.ok) throw new Error(`Jupyter answered ${res.status} on ${new URL(url).pathname}`);
  return res.json();
}

/**
 * Reads activity without creating any: /api/status does not track activity, and
 * `no_track_activity=1` keeps /api/kernels from counting as use.
 */
export async function readJupyterActivity(fetchFn: FetchLike, port: number, basePath: string, token: Secret): Promise<JupyterActivity> {
  const status = JupyterStatusSchema.parse(await getJson(fetchFn, apiUrl(port, basePath, "api/status"), token, 5000));
  const kernels = JupyterKernelsSchema.parse(await getJson(fetchFn, apiUrl(port, basePath, "api/kernels?no_track_activity=1"), token, 5000));
  return {
    lastActivity: status.last_activity,
    connections: status.connections,
    busy: kernels.some((k) => k.execution_state === "busy"),
  };
}

/** Waits until Jupyter answers /api/status with the token; throws after `timeoutMs`. */
export async function waitForJupyter(
  fetchFn: FetchLike,
  port: number,
  basePath: string,
  token: Secret,
  timeoutMs = 60_000,
  isAlive: () => Promise<boolean> = async () => true,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = "";
  for (let attempt = 0; Date.now() < deadline && attempt < 10_000; attempt++) {
    try {
      await getJson(fetchFn, apiUrl(port, basePath, "api/status"), token, 2000);
      return;
    } catch (err) {
      lastError = (err as Error).message;
    }
    if (!(await isAlive())) throw new Error("the Jupyter container stopped before it was ready");
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`Jupyter did not become ready within ${Math.round(timeoutMs / 1000)} s (${lastError})`);
}
