import { RunitError } from "@runit/protocol";
import type { z } from "zod";

/**
 * Parses a request body with `schema` or throws INVALID_BODY naming the offending field path
 * (`hardware.cpus: expected number, got string`). Unknown fields name the field itself, so
 * `{"hardware": {..., "extra": 1}}` reports `hardware.extra`.
 */
export function parseBody<S extends z.ZodType>(schema: S, input: unknown): z.infer<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (!issue) throw new RunitError("INVALID_BODY");
  const segments = issue.path.map(String);
  if (issue.code === "unrecognized_keys" && issue.keys[0] !== undefined) segments.push(issue.keys[0]);
  const path = segments.join(".");
  const message = issue.code === "unrecognized_keys" ? "unknown field" : issue.message;
  throw new RunitError("INVALID_BODY", path ? `${path}: ${message}` : message, { path });
}
