import type { AgentLogger } from "../logger.js";
import type { SessionTunnel } from "./types.js";

/**
 * The built-in relay tunnel (issue 4): the agent dials the control plane's AGENT_TUNNEL_PATH and
 * carries renter traffic to Jupyter. STUB until the relay work replaces this body.
 */
export function createRelayTunnel(_opts: { logger: AgentLogger }): SessionTunnel {
  return {
    describe: async () => ({ kind: "relay" }),
    attach: async () => undefined,
    close: async () => undefined,
  };
}
