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

/**
 * Report that `tier` cannot run. Prints `SKIPPED: <tier>: <reason>`; under
 * CI it throws instead, failing the test that called it.
 */
export function skipTier(tier: string, reason: string): void {
  const line = skipLine(tier, reason);
  if (inCi) throw new Error(`${line} (every tier must run in CI)`);
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
