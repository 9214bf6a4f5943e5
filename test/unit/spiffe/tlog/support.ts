import { isSigilError } from "../../../../spiffe/errors.js";

/** `<code>: <message>` of the SigilError `fn` throws, "no error", or what else it threw. */
export function errorText(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return isSigilError(e) ? `${e.code}: ${e.message}` : `not a SigilError: ${String(e)}`;
  }
  return "no error";
}
