/**
 * The runner of real-kernel tests: boots the VM with the shared guest
 * prelude (tools/guest.ts) and reports each guest check as its own test step.
 *
 * @module
 */

import assert from "node:assert/strict";
import { guestPrelude } from "../../tools/guest.ts";
import { runInVm, vmUnavailable } from "../../tools/vm.ts";
import { skipTier } from "../support/tier.ts";

/**
 * Boot the VM, run `script` after the prelude, and make each expected guest
 * check a test step. A missing VM skips loudly (fails in CI).
 */
export async function runGuestTests(
  t: Deno.TestContext,
  tier: string,
  script: string,
  expected: string[],
  timeoutMs = 600_000,
): Promise<void> {
  const reason = await vmUnavailable();
  if (reason) {
    skipTier(tier, reason);
    return;
  }
  const started = performance.now();
  const run = await runInVm(guestPrelude + script, { timeoutMs });
  console.log(
    `${tier}: boot ${(run.bootMs / 1000).toFixed(1)} s, VM ${(run.totalMs / 1000).toFixed(1)} s, ` +
      `test ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
  // Measurements the guest reports (`@@METRIC name value`) are worth seeing in every run.
  for (const line of run.log.split("\n")) {
    if (line.startsWith("@@METRIC ")) console.log(`${tier}: ${line.slice(9).trim()}`);
  }
  const tail = `\n--- VM log (tail) ---\n${run.log.slice(-8000)}`;
  for (const name of expected) {
    await t.step(name, () => {
      const result = run.results.find((r) => r.name === name);
      assert.ok(result, `the guest never reported "${name}"${tail}`);
      assert.ok(result.ok, `${result.detail}${tail}`);
    });
  }
  const unexpected = run.results.filter((r) => !expected.includes(r.name));
  assert.deepEqual(unexpected.map((r) => r.name), [], `unexpected guest results${tail}`);
  assert.equal(run.timedOut, false, `the VM timed out${tail}`);
  assert.equal(run.exitCode, 0, `guest script exit code${tail}`);
}
