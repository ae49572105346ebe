import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import { asSecret, type Secret } from "@runit/protocol";

/** A fresh 256-bit secret, base64url, with an optional readable prefix (`rk_` for provider keys). */
export function newSecret(prefix = ""): Secret {
  return asSecret(`${prefix}${randomBytes(32).toString("base64url")}`);
}

/**
 * The stored form of a secret. A plain sha256 is enough: every secret is 256 random bits, so
 * there is nothing to brute-force, and a hash lets us look a secret up by equality.
 */
export function hashSecret(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

/** Constant-time string comparison (for the operator token). */
export function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(hashSecret(a), "hex");
  const right = Buffer.from(hashSecret(b), "hex");
  return timingSafeEqual(left, right);
}

/** The bearer token of an Authorization header, or undefined. */
export function bearerToken(header: string | undefined): string | undefined {
  const match = /^Bearer\s+(\S{1,1024})\s*$/i.exec(header ?? "");
  return match?.[1];
}
