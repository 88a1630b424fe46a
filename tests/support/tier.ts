/**
 * Test tiers: a tier that cannot run says so loudly, and in CI (`CI=true`)
 * a tier that cannot run is a failure, not a skip.
 *
 * @module
 */

/** True when running under CI, where every tier must run. */
export const inCi = Deno.env.get("CI") === "true";

/**
 * Report that `tier` cannot run. Prints `SKIPPED: <tier>: <reason>`; under
 * CI it throws instead, failing the test that called it.
 */
export function skipTier(tier: string, reason: string): void {
  const line = `SKIPPED: ${tier}: ${reason}`;
  if (inCi) throw new Error(`${line} (every tier must run in CI)`);
  console.error(`\n${"=".repeat(line.length)}\n${line}\n${"=".repeat(line.length)}`);
}
