import type Docker from "dockerode";
import type { AgentLogger } from "../logger.js";

/** Thrown when the session image is absent; its message tells the provider what to run. */
export class ImageMissingError extends Error {
  override name = "ImageMissingError";
}

/**
 * Checks that the session image exists. The agent does not build it itself: building may need
 * mmdebstrap, apt and root (no registry), which scripts/build-image.sh does with visible progress.
 */
export async function ensureSessionImage(docker: Docker, image: string, logger: AgentLogger): Promise<void> {
  logger.info(`[agent] checking docker image: ${image.replace(/:latest$/, "")}`);
  try {
    await docker.getImage(image).inspect();
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) {
      throw new ImageMissingError(`docker image ${image} is missing: run ./scripts/build-image.sh (it builds it without a registry)`);
    }
    throw err;
  }
  logger.info("[agent] docker image exists");
}
