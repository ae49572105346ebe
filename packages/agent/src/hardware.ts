import { execFile } from "node:child_process";
import { cpus, totalmem } from "node:os";
import type { Hardware } from "@runit/protocol";
import type { ContainerLimits } from "./docker/hardenedSpec.js";

/** Lists GPUs through nvidia-smi; none when it is absent or fails. */
export function detectGpus(bin = "nvidia-smi"): Promise<Hardware["gpus"]> {
  return new Promise((resolve) => {
    execFile(bin, ["--query-gpu=name,memory.total", "--format=csv,noheader,nounits"], { timeout: 5000 }, (err, stdout) => {
      if (err) return resolve([]);
      const gpus = stdout
        .split("\n")
        .map((line) => line.split(",").map((s) => s.trim()))
        .filter((parts) => parts.length >= 2 && parts[0])
        .map(([name, mb]) => ({ name: (name ?? "GPU").slice(0, 128), vramMb: Math.max(0, Math.round(Number(mb)) || 0) }));
      resolve(gpus);
    });
  });
}

/**
 * What a renter gets: the host's CPUs and memory, capped by the container limits (a session
 * never gets more than its limits), and the GPUs nvidia-smi reports.
 */
export async function detectHardware(limits: Pick<ContainerLimits, "cpus" | "memoryMb">, gpuBin?: string): Promise<Hardware> {
  return {
    cpus: Math.min(cpus().length || 1, limits.cpus),
    memoryMb: Math.min(Math.floor(totalmem() / (1024 * 1024)), Math.round(limits.memoryMb)),
    gpus: await detectGpus(gpuBin),
  };
}
