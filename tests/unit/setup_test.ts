/**
 * The set-up the demo and the test tiers do for themselves: the one package
 * list (tools/packages.ts), how a missing package is found and refused, and
 * how `deno task test` finds the SKIPPED lines of a run.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  cannotInstall,
  type DebianPackage,
  DEMO_PACKAGES,
  ensurePackages,
  installedFromDpkgQuery,
  missingPackages,
  TIER_PACKAGES,
  VM_BOOT_PACKAGES,
  VM_PACKAGES,
} from "../../tools/packages.ts";
import { skipLine, skippedLines } from "../support/tier.ts";

const root = new URL("../..", import.meta.url).pathname;

/** Installed everywhere: on Debian dpkg lists itself; elsewhere `sh` is on PATH. */
const present: DebianPackage = { name: "dpkg", why: "always there", command: "sh" };
const absent: DebianPackage = {
  name: "nbd9-no-such-package",
  why: "never there",
  command: "nbd9-no-such-program",
};

Deno.test("dpkg-query's status lines: only 'install ok installed' counts, arch suffixes dropped", () => {
  const output = [
    "diod\tinstall ok installed",
    "fio\tdeinstall ok config-files",
    "libc6:amd64\tinstall ok installed",
    "kmod\tinstall ok unpacked",
    "",
  ].join("\n");
  assert.deepEqual([...installedFromDpkgQuery(output)].sort(), ["diod", "libc6"]);
});

Deno.test("missingPackages asks the system and names only what is not installed", async () => {
  assert.deepEqual(await missingPackages([present, absent]), [absent]);
  assert.deepEqual(await missingPackages([]), []);
});

Deno.test("ensurePackages with nothing missing installs nothing and says nothing", async () => {
  const lines: string[] = [];
  const ensured = await ensurePackages("test", [present], "for this test", (l) => lines.push(l));
  assert.deepEqual(ensured, { ok: true, installed: [] });
  assert.deepEqual(lines, []);
});

Deno.test("a package that cannot be installed here is refused in one line saying what to install", () => {
  const missing: DebianPackage[] = [
    { name: "diod", why: "a 9P server", command: "diod" },
    { name: "fio", why: "fio", command: "fio" },
  ];
  assert.equal(cannotInstall(missing, { root: true, debian: true }), null);
  const notRoot = cannotInstall(missing, { root: false, debian: true });
  assert.equal(
    notRoot,
    "missing Debian packages diod fio; run as root to have them installed, " +
      "or run: apt-get install --no-install-recommends diod fio",
  );
  const notDebian = cannotInstall(missing, { root: true, debian: false });
  assert.equal(
    notDebian,
    "missing diod, fio: this is not Debian (no apt-get and dpkg); " +
      "install what Debian's diod fio provide",
  );
});

Deno.test("the vm tier has what booting the VM, a Debian root and the demo need; every tier has a list", () => {
  const vm = new Set(TIER_PACKAGES.vm.map((p) => p.name));
  for (const p of [...VM_PACKAGES, ...VM_BOOT_PACKAGES, ...DEMO_PACKAGES]) {
    assert.ok(vm.has(p.name), p.name);
  }
  assert.deepEqual(Object.keys(TIER_PACKAGES).sort(), ["servers", "unit", "vm"]);
});

Deno.test("CI keeps no package list of its own: .ci/run names none of tools/packages.ts", async () => {
  const script = await Deno.readTextFile(`${root}/.ci/run`);
  const all = [
    ...Object.values(TIER_PACKAGES).flat(),
    ...VM_PACKAGES,
    ...VM_BOOT_PACKAGES,
    ...DEMO_PACKAGES,
  ];
  const named = [...new Set(all.map((p) => p.name))].filter((name) =>
    new RegExp(`(^|[\\s"'(])${name.replace(/[.+]/g, "\\$&")}([\\s"')]|$)`, "m").test(script)
  );
  assert.deepEqual(named, []);
});

Deno.test("skippedLines finds each SKIPPED line of a run once, through colours and indents", () => {
  const line = skipLine("servers (proxy)", "nbdinfo is not installed");
  assert.equal(line, "SKIPPED: servers (proxy): nbdinfo is not installed");
  const output = `running 3 tests\n=====\n${line}\n=====\n` +
    `  \x1b[31m${line}\x1b[0m\nok | 3 passed | 0 failed\nnot SKIPPED: in the middle\n`;
  assert.deepEqual(skippedLines(output), [line]);
  assert.deepEqual(skippedLines("ok | 3 passed | 0 failed\n"), []);
});

Deno.test("under CI a tier's skip fails its test, an optional check's skip is only printed", async () => {
  const tierUrl = new URL("../support/tier.ts", import.meta.url).href;
  const script = `
    import { skipTier } from ${JSON.stringify(tierUrl)};
    skipTier("servers (compiled binary)", "no denort", "runs whenever DENORT_BIN is given");
    console.log("optional skip returned");
    skipTier("vm", "no QEMU");
    console.log("not reached under CI");`;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    env: { CI: "true" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  assert.notEqual(out.code, 0, text);
  assert.match(
    text,
    /SKIPPED: servers \(compiled binary\): no denort \[optional: runs whenever DENORT_BIN is given\]/,
  );
  assert.match(text, /optional skip returned/);
  assert.match(text, /SKIPPED: vm: no QEMU \(every tier must run in CI\)/);
  assert.doesNotMatch(text, /not reached under CI/);
});
