/**
 * The Debian root's cache key, its mmdebstrap command and its tree helpers (no root, no
 * network: nothing is built).
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  checksumTree,
  debianRootRecipe,
  mmdebstrapArgs,
  recipeKey,
  removeTree,
  writeTreeFiles,
} from "../../tools/debian_root.ts";

Deno.test("the root's cache key follows every part of the recipe and nothing else", async () => {
  const base = debianRootRecipe("6.1.0-57-amd64", true);
  const key = await recipeKey(base);
  assert.match(key, /^[0-9a-f]{16}$/);
  assert.equal(await recipeKey(debianRootRecipe("6.1.0-57-amd64", true)), key);
  const changed = [
    debianRootRecipe("6.1.0-58-amd64", true),
    debianRootRecipe("6.1.0-57-amd64", false),
    { ...base, packages: [...base.packages, "strace"] },
    { ...base, sources: base.sources.slice(0, 2) },
    { ...base, suite: "trixie" },
  ];
  const keys = await Promise.all(changed.map(recipeKey));
  assert.equal(new Set([key, ...keys]).size, changed.length + 1);
});

Deno.test("the mmdebstrap command names the exact kernel, no nbd-client, and no initrd build", () => {
  const args = mmdebstrapArgs(debianRootRecipe("6.1.0-57-amd64", false), "/somewhere/root");
  const include = args.find((a) => a.startsWith("--include="))!.slice("--include=".length)
    .split(",");
  assert.ok(include.includes("linux-image-6.1.0-57-amd64"));
  assert.ok(include.includes("systemd-sysv") && include.includes("dracut-network"));
  assert.ok(!include.some((p) => p.startsWith("nbd-client")));
  assert.ok(args.includes("--variant=minbase"));
  const essential = args.find((a) => a.startsWith("--essential-hook="))!;
  assert.match(essential, /dpkg-divert .*--add \/usr\/sbin\/update-initramfs/);
  assert.ok(args.some((a) => /--customize-hook=.*dpkg-divert .*--remove/.test(a)));
  assert.ok(!args.some((a) => a.includes("eatmydata")));
  // Suite, target, then the sources, bookworm-security among them (the kernel lives there).
  const at = args.indexOf("/somewhere/root");
  assert.equal(args[at - 1], "bookworm");
  assert.ok(args.slice(at + 1).some((s) => s.includes("bookworm-security")));
});

Deno.test("tree files and checksums: sha256sum lines from the tree's root, sorted by path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "9nbd-tree-test-" });
  try {
    await writeTreeFiles(dir, [
      { path: "/usr/lib/b", contents: "bee\n" },
      { path: "/usr/bin/a", contents: "#!/bin/sh\n", mode: 0o755 },
      { path: "/usr/lib/link", contents: "b", symlink: true },
      { path: "/etc/outside", contents: "not under /usr" },
    ]);
    assert.equal((await Deno.stat(`${dir}/usr/bin/a`)).mode! & 0o777, 0o755);
    assert.equal(await Deno.readLink(`${dir}/usr/lib/link`), "b");
    const sha = async (text: string) =>
      Array.from(
        new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text))),
        (b) => b.toString(16).padStart(2, "0"),
      ).join("");
    assert.equal(
      await checksumTree(dir, "/usr"),
      `${await sha("#!/bin/sh\n")}  /usr/bin/a\n${await sha("bee\n")}  /usr/lib/b\n`,
    );
    await assert.rejects(
      writeTreeFiles(dir, [{ path: "/etc/../../escape", contents: "" }]),
      /without '\.\.'/,
    );
    await assert.rejects(writeTreeFiles(dir, [{ path: "relative", contents: "" }]), /absolute/);
  } finally {
    await removeTree(dir);
  }
  await assert.rejects(Deno.stat(dir), Deno.errors.NotFound);
});
