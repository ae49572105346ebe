declare const secretBrand: unique symbol;

/**
 * A secret string (provider key, session secret, access token, Jupyter token). The brand makes
 * a secret visible in signatures so loggers and serializers can mask it.
 */
export type Secret = string & { readonly [secretBrand]: true };

/** Marks a string as a secret. */
export function asSecret(value: string): Secret {
  return value as Secret;
}

/** At most an 8-character prefix followed by `…`: the only form a secret may be logged in. */
export function maskSecret(value: string | undefined | null): string {
  if (!value) return "";
  return `${value.slice(0, Math.min(8, Math.floor(value.length / 2)))}…`;
}
