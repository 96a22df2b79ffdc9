/**
 * A status code: one of the 16 gRPC/Connect codes, by its Connect name. The
 * names are those Go's `parley.Code.String()` returns; on the wire a code
 * travels as the number of the `parley.v1.Code` enum.
 */
export type Code =
  | "canceled"
  | "unknown"
  | "invalid_argument"
  | "deadline_exceeded"
  | "not_found"
  | "already_exists"
  | "permission_denied"
  | "resource_exhausted"
  | "failed_precondition"
  | "aborted"
  | "out_of_range"
  | "unimplemented"
  | "internal"
  | "unavailable"
  | "data_loss"
  | "unauthenticated";

/** The codes in wire order: codes[n - 1] is the code numbered n. */
const codes = (
  "canceled unknown invalid_argument deadline_exceeded not_found already_exists " +
  "permission_denied resource_exhausted failed_precondition aborted out_of_range " +
  "unimplemented internal unavailable data_loss unauthenticated"
).split(" ") as readonly Code[];

/**
 * Returns the code numbered n on the wire; "unknown" for 0 (unspecified) and
 * for numbers this version does not know.
 */
export function codeFromNumber(n: number): Code {
  return codes[n - 1] ?? "unknown";
}

/** Returns the wire number of a code (1 to 16). */
export function codeToNumber(code: Code): number {
  return codes.indexOf(code) + 1;
}

/** Returns the code named s ("not_found"), or undefined when s names none. */
export function parseCode(s: string): Code | undefined {
  return codes.includes(s as Code) ? (s as Code) : undefined;
}
