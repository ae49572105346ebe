export { runAgent, AgentStartError, type AgentHandle, type AgentEvents } from "./agent.js";
export { resolveAgentOptions, AgentOptionError, type AgentOptions } from "./options.js";
export type { SessionInfo } from "./sessionContext.js";
export {
  hardenedContainerSpec,
  assertHardened,
  UnhardenedSpecError,
  ALLOWED_IMAGE_REPOSITORIES,
  DEFAULT_IMAGE,
  DEFAULT_SESSION_NETWORK,
  LABELS,
  type ContainerLimits,
  type HardenedSpecOptions,
} from "./docker/hardenedSpec.js";
export { startSessionContainer, removeContainer, listAgentContainers, type SessionConfig } from "./docker/sessionContainer.js";
export { ensureSessionNetwork } from "./docker/sessionNetwork.js";
export { createControlPlaneClient, ControlPlaneError, type ControlPlaneClient } from "./controlPlaneClient.js";
export { createLogger, silentLogger, type AgentLogger, type LineSink } from "./logger.js";
export { createCloudflaredTunnel, type CloudflaredOptions } from "./tunnel/cloudflared.js";
export { createRelayTunnel } from "./tunnel/relay.js";
export { parseQuickTunnelUrl, quickTunnelUrlFromMetrics, isQuickTunnelHost } from "./tunnel/quickTunnelUrl.js";
export type { SessionTunnel, TunnelAttachment, TunnelEvent, TunnelFactory, TunnelContext } from "./tunnel/types.js";
export { createSessionWorkspace, purgeOldWorkspaces } from "./workspace.js";
export { DEFAULT_MIN_FREE_DISK_MB, diskTooFull, freeDiskMb } from "./diskGuard.js";
export { runDoctor, type DoctorCheck } from "./doctor.js";
export { readJupyterActivity, waitForJupyter } from "./jupyter/jupyterProbe.js";
export { SOCKET_IN_CONTAINER, createSocketDir, jupyterGetJson, pinJupyterSocket, removeSocketDir, sessionSocketPaths, NotASocketError, type JupyterEndpoint, type SessionSocketPaths } from "./jupyter/jupyterEndpoint.js";
export { isolateSessionNetwork, releaseSessionNetwork, SessionFirewallError, SESSION_EGRESS_CHAIN, SESSION_INPUT_CHAIN } from "./docker/sessionFirewall.js";
export { tuneGcForRelay } from "@runit/relay-link";
