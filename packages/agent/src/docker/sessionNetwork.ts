import type Docker from "dockerode";
import { LABELS } from "./hardenedSpec.js";

/**
 * Makes sure the user-defined bridge for sessions exists, with inter-container traffic disabled,
 * so one session cannot reach another and none sits on the default docker0 bridge.
 */
export async function ensureSessionNetwork(docker: Docker, name: string): Promise<void> {
  const existing = await docker.listNetworks({ filters: { name: [name] } });
  if (existing.some((n) => n.Name === name)) return;
  try {
    await docker.createNetwork({
      Name: name,
      Driver: "bridge",
      CheckDuplicate: true,
      Options: { "com.docker.network.bridge.enable_icc": "false" },
      Labels: { [LABELS.managed]: "true" },
    });
  } catch (err) {
    // Another agent may have created it between our check and our create.
    const again = await docker.listNetworks({ filters: { name: [name] } });
    if (!again.some((n) => n.Name === name)) throw err;
  }
}
