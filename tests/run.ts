/**
 * `deno task test`: run every test tier in turn (unit, real servers, real
 * kernel in a VM), stream their output, and finish with one summary line
 * `test: N passed, N failed`.
 *
 * Before a tier runs, the Debian packages it needs (tools/packages.ts) are
 * installed if missing and this is root on Debian. A tier whose packages
 * cannot be installed here, or that needs root and is run by another user, is
 * not run: it prints `SKIPPED: <tier>: <reason>` (a failure under `CI=true`).
 *
 * Usage: deno task test [TIER...]   (tiers: unit servers vm; default all)
 *
 * Exit status: 0 every test ran and passed; 1 a test failed (under `CI=true`,
 * also a tier or test that could not run); 2 unknown tier; 3 nothing failed
 * but a tier or test could not run here (the `SKIPPED:` lines say why).
 *
 * @module
 */

import { ensurePackages, TIER_PACKAGES } from "../tools/packages.ts";
import { OPTIONAL_MARK, skipLine, skippedLines, skipTier } from "./support/tier.ts";

/** The tiers; `root`: the tier starts servers and devices that only root can. */
const tiers: Record<string, { dir: string; parallel: boolean; root: boolean }> = {
  unit: { dir: "tests/unit", parallel: true, root: false },
  servers: { dir: "tests/servers", parallel: false, root: true },
  vm: { dir: "tests/vm", parallel: false, root: true },
};

const root = new URL("..", import.meta.url).pathname;
const wanted = Deno.args.length > 0 ? Deno.args : Object.keys(tiers);
for (const name of wanted) {
  if (!tiers[name]) {
    console.error(`tests/run.ts: unknown tier "${name}" (tiers: ${Object.keys(tiers).join(" ")})`);
    Deno.exit(2);
  }
}

const summary = /(ok|FAILED) \| (\d+) passed(?: \(\d+ steps?\))? \| (\d+) failed/;
let passed = 0;
let failed = 0;
const report: string[] = [];
const skipped: string[] = [];

/** Copies a child's stream to ours as it comes, keeping its text for the summary. */
async function tee(
  stream: ReadableStream<Uint8Array>,
  to: { write(p: Uint8Array): Promise<number> },
): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of stream) {
    await to.write(chunk);
    text += decoder.decode(chunk, { stream: true });
  }
  return text + decoder.decode();
}

for (const name of wanted) {
  const tier = tiers[name];
  console.log(`\n### tier ${name} (${tier.dir})`);
  const ensured = tier.root && Deno.uid() !== 0
    ? { ok: false as const, reason: "it runs only as root" }
    : await ensurePackages("test", TIER_PACKAGES[name], `for the ${name} tier`);
  if (!ensured.ok) {
    try {
      skipTier(name, ensured.reason);
      skipped.push(skipLine(name, ensured.reason));
      report.push(`  ${name.padEnd(8)} SKIPPED`);
    } catch (err) {
      // Under CI a tier that cannot run is a failure.
      console.error((err as Error).message);
      failed++;
      report.push(`  ${name.padEnd(8)} FAILED (could not run)`);
    }
    continue;
  }
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      "-A",
      ...(tier.parallel ? ["--parallel"] : []),
      tier.dir,
    ],
    cwd: root,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const [stdout, stderr] = await Promise.all([
    tee(child.stdout, Deno.stdout),
    tee(child.stderr, Deno.stderr),
  ]);
  const status = await child.status;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  // deno test prints ANSI colours; strip them before reading its summary.
  // deno-lint-ignore no-control-regex
  const match = summary.exec(stdout.slice(-4096).replace(/\x1b\[[0-9;]*m/g, ""));
  const tierPassed = match ? Number(match[2]) : 0;
  const tierFailed = match ? Number(match[3]) : (status.success ? 0 : 1);
  passed += tierPassed;
  failed += tierFailed + (status.success || tierFailed > 0 ? 0 : 1);
  const tierSkipped = skippedLines(`${stdout}\n${stderr}`);
  skipped.push(...tierSkipped);
  report.push(
    `  ${name.padEnd(8)} ${
      status.success ? "ok    " : "FAILED"
    } ${tierPassed} passed, ${tierFailed} failed, ${seconds} s${
      tierSkipped.length > 0 ? `, ${tierSkipped.length} SKIPPED` : ""
    }`,
  );
}

console.log(`\n### summary\n${[...report, ...skipped.map((s) => `  ${s}`)].join("\n")}`);
console.log(`test: ${passed} passed, ${failed} failed`);
// An optional check that lacked its input (see skipTier) is listed but is not a skip of a tier.
const skippedTiers = skipped.filter((line) => !line.includes(OPTIONAL_MARK));
Deno.exit(failed > 0 ? 1 : skippedTiers.length > 0 ? 3 : 0);
