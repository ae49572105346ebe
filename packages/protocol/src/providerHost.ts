import { z } from "zod";

// What crosses a process boundary on the provider's machine, validated where the agent reads it:
// the answers of the session's Jupyter, cloudflared's metrics endpoint, and the agent's own state
// file (written by one run, read by the next). The control plane never sees these.

/** Jupyter's `GET <base_url>api/status`. */
export const JupyterStatusSchema = z.object({
  last_activity: z.string(),
  connections: z.number().int().nonnegative(),
  kernels: z.number().int().nonnegative(),
});
export type JupyterStatus = z.infer<typeof JupyterStatusSchema>;

/** Jupyter's `GET <base_url>api/kernels`: the fields the agent reads of each kernel. */
export const JupyterKernelsSchema = z.array(z.object({ execution_state: z.string(), connections: z.number().optional() }));
export type JupyterKernels = z.infer<typeof JupyterKernelsSchema>;

/** cloudflared's `GET /quicktunnel` on its metrics port: `{"hostname":"<name>.trycloudflare.com"}`. */
export const QuickTunnelMetricsSchema = z.object({ hostname: z.string().max(253) });

/** How an agent reaches a session's Jupyter: its pinned Unix socket (relay) or its port on 127.0.0.1. */
export const JupyterEndpointSchema = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("socket"), path: z.string().min(1).max(4096) }),
  z.strictObject({ kind: z.literal("tcp"), port: z.number().int().min(1).max(65535) }),
]);

/** The live session an agent persists so a restart after SIGKILL can re-adopt or clean it up. */
export const AgentSessionStateSchema = z.object({
  sessionId: z.string(),
  sessionSecret: z.string(),
  jupyterToken: z.string(),
  containerId: z.string(),
  jupyter: JupyterEndpointSchema,
  basePath: z.string(),
  tunnel: z.enum(["relay", "cloudflared"]),
  workspaceDir: z.string(),
});
export type AgentSessionState = z.infer<typeof AgentSessionStateSchema>;
