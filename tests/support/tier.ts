/**
 * Test tiers: a tier that cannot run says so loudly, and in CI (`CI=true`)
 * a tier that cannot run is a failure, not a skip.
 *
 * @module
 */

/** True when running under CI, where every tier must run. */
export const inCi = Deno.env.get("CI") === "true";

/** The line that reports a skip: `SKIPPED: <tier>: <reason>`. */
export function skipLine(tier: string, reason: string): string {
  return `SKIPPED: ${tier}: ${reason}`;
}

/** What marks a skip as optional in its `SKIPPED:` line. */
export const OPTIONAL_MARK = "[optional: ";

/**
 * Report that `tier` cannot run. Prints `SKIPPED: <tier>: <reason>`; under
 * CI it throws instead, failing the test that called it.
 *
 * `optional` names the input a check needs that no machine here has (the
 * compiled binary needs a denort runtime: "runs when DENORT_BIN is given").
 * Such a skip is printed the same way, with `[optional: ...]` after it, and
 * fails nothing, under CI either: the check runs whenever its input is given.
 */
export function skipTier(tier: string, reason: string, optional?: string): void {
  const line = skipLine(tier, reason) + (optional ? ` ${OPTIONAL_MARK}${optional}]` : "");
  if (inCi && !optional) throw new Error(`${line} (every tier must run in CI)`);
  console.error(`\n${"=".repeat(line.length)}\n${line}\n${"=".repeat(line.length)}`);
}

/** The `SKIPPED: ...` lines in a test run's output, each once, in order. */
export function skippedLines(output: string): string[] {
  // deno test may colour or indent what a test prints.
  // deno-lint-ignore no-control-regex
  const plain = output.replace(/\x1b\[[0-9;]*m/g, "");
  const lines = plain.split("\n").map((l) => l.trim()).filter((l) => l.startsWith("SKIPPED: "));
  return [...new Set(lines)];
}
