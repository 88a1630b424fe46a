/**
 * `deno task test`: run every test tier in turn (unit, real servers, real
 * kernel in a VM), stream their output, and finish with one summary line
 * `test: N passed, N failed`. Exit status is non-zero if any tier failed.
 *
 * Usage: deno task test [TIER...]   (tiers: unit servers vm; default all)
 *
 * @module
 */

const tiers: Record<string, { dir: string; parallel: boolean }> = {
  unit: { dir: "tests/unit", parallel: true },
  servers: { dir: "tests/servers", parallel: false },
  vm: { dir: "tests/vm", parallel: false },
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

for (const name of wanted) {
  const tier = tiers[name];
  const started = performance.now();
  console.log(`\n### tier ${name} (${tier.dir})`);
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "test",
      "-A",
      ...(tier.parallel ? ["--parallel"] : []),
      tier.dir,
    ],
    cwd: root,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let tail = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    await Deno.stdout.write(chunk);
    tail = (tail + decoder.decode(chunk, { stream: true })).slice(-4096);
  }
  const status = await child.status;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  // deno test prints ANSI colours; strip them before reading its summary.
  // deno-lint-ignore no-control-regex
  const match = summary.exec(tail.replace(/\x1b\[[0-9;]*m/g, ""));
  const tierPassed = match ? Number(match[2]) : 0;
  const tierFailed = match ? Number(match[3]) : (status.success ? 0 : 1);
  passed += tierPassed;
  failed += tierFailed + (status.success || tierFailed > 0 ? 0 : 1);
  report.push(
    `  ${name.padEnd(8)} ${
      status.success ? "ok    " : "FAILED"
    } ${tierPassed} passed, ${tierFailed} failed, ${seconds} s`,
  );
}

console.log(`\n### summary\n${report.join("\n")}`);
console.log(`test: ${passed} passed, ${failed} failed`);
Deno.exit(failed > 0 ? 1 : 0);
