/**
 * Opt-in environment expansion (`--expand-env`), as SPIRE's `-expandEnv`:
 * `${NAME}` in the config text is replaced by the variable's value before the
 * text is parsed. Only the braced form is expanded, so a `$` elsewhere (a
 * password in a connection string, a regex) is left alone; `$${NAME}` writes a
 * literal `${NAME}`. A reference to an unset variable is an error rather than
 * an empty string, so a typo cannot silently blank a value.
 */
import { configError, type ConfigIssue } from "./issues.js";

const REFERENCE = /\$(\$?)\{([^}]*)\}/g;
const NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/**
 * Expands `${NAME}` references in `text` from `env`.
 *
 * @param source named in the error message (usually the file path)
 * @throws SigilError `ERR_INVALID_ARGUMENT` listing every unset or malformed reference
 *
 * @example
 * ```ts
 * expandEnv("trust_domain: ${TD}", { TD: "example.org" }); // "trust_domain: example.org"
 * ```
 */
export function expandEnv(text: string, env: Readonly<Record<string, string | undefined>> = process.env, source?: string): string {
  const issues: ConfigIssue[] = [];
  const out = text.replace(REFERENCE, (match, escape: string, name: string, offset: number) => {
    if (escape === "$") return match.slice(1);
    const value = NAME.test(name) ? env[name] : undefined;
    if (value === undefined) {
      const { line, column } = lineColumn(text, offset);
      issues.push({
        path: "",
        problem: NAME.test(name) ? `environment variable ${name} is not set` : `invalid environment reference ${JSON.stringify(match)}`,
        line,
        column,
      });
      return match;
    }
    return value;
  });
  if (issues.length > 0) throw configError(issues, source);
  return out;
}

function lineColumn(text: string, offset: number): { line: number; column: number } {
  let line = 1;
  let lineStart = 0;
  for (let i = text.indexOf("\n"); i !== -1 && i < offset; i = text.indexOf("\n", i + 1)) {
    line++;
    lineStart = i + 1;
  }
  return { line, column: offset - lineStart + 1 };
}
