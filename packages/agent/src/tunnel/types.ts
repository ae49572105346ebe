import type { Secret, TunnelSpec } from "@runit/protocol";
import type { JupyterEndpoint } from "../jupyter/jupyterEndpoint.js";
import type { AgentLogger } from "../logger.js";

/** What a tunnel learns once the session is registered. */
export interface TunnelAttachment {
  /** Control-plane base URL, e.g. `http://127.0.0.1:10000`. */
  serverUrl: string;
  sessionId: string;
  sessionSecret: Secret;
  /** Where the session's Jupyter listens: its pinned Unix socket (relay) or its port on 127.0.0.1. */
  jupyter: JupyterEndpoint;
  jupyterToken: Secret;
  /** Jupyter's base_url: `/s/<id>/` in relay mode, `/` in cloudflared mode. */
  basePath: string;
}

/**
 * Something the agent must react to: the tunnel died for good or its public URL changed (the
 * session is replaced), or it hit a condition no fresh session cures (the agent stops with `error`).
 */
export type TunnelEvent =
  | { type: "died"; reason: string }
  | { type: "url-changed"; spec: TunnelSpec }
  | { type: "fatal"; error: Error };

/**
 * How renter traffic reaches one session's Jupyter. One instance per session: `describe()` runs
 * before registration (cloudflared starts here and learns its URL), `attach()` after it (the relay
 * dials the control plane here), `close()` when the session ends.
 */
export interface SessionTunnel {
  /** The `tunnel` field of the registration body. */
  describe(): Promise<TunnelSpec>;
  /** Called once the control plane has accepted the session. */
  attach(reg: TunnelAttachment): Promise<void>;
  /** Stops the tunnel; must be safe to call twice. */
  close(): Promise<void>;
  /** Subscribes to tunnel events; returns the unsubscribe function. Optional: a tunnel may never fire any. */
  onEvent?(listener: (event: TunnelEvent) => void): () => void;
}

/** What every tunnel factory receives. */
export interface TunnelContext {
  logger: AgentLogger;
  /** Where the session's Jupyter listens. */
  jupyter: JupyterEndpoint;
}

/** Makes the tunnel of one session. */
export type TunnelFactory = (ctx: TunnelContext) => SessionTunnel;
