/**
 * The network-boot harness without QEMU: the user-network arguments and their checks, console
 * line splitting and marker parsing, the console reader on a real process, and the Debian
 * root's cache key and tree helpers.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  type GuestForward,
  LineSplitter,
  parseMetrics,
  spawnConsole,
  userNetworkArgs,
} from "../../tools/boot_vm.ts";
import {
  checksumTree,
  debianRootRecipe,
  mmdebstrapArgs,
  recipeKey,
  removeTree,
  writeTreeFiles,
} from "../../tools/debian_root.ts";

const nc = ["busybox", "nc"];

Deno.test("each forward becomes a cmd: guestfwd relayed per connection, on a restricted net", () => {
  const forwards: GuestForward[] = [
    { guestAddress: "10.0.2.100", guestPort: 564, hostPort: 40001 },
    { guestAddress: "10.0.2.101", guestPort: 10809, hostPort: 40002 },
  ];
  assert.deepEqual(userNetworkArgs(forwards, nc), [
    "-netdev",
    "user,id=n0,restrict=on," +
    "guestfwd=tcp:10.0.2.100:564-cmd:busybox nc 127.0.0.1 40001," +
    "guestfwd=tcp:10.0.2.101:10809-cmd:busybox nc 127.0.0.1 40002",
    "-device",
    "virtio-net-pci,netdev=n0,romfile=",
  ]);
  assert.deepEqual(userNetworkArgs([], nc)[1], "user,id=n0,restrict=on");
});

Deno.test("a forward QEMU could not honour is refused in one line", () => {
  const bad: [GuestForward, RegExp][] = [
    [{ guestAddress: "192.168.1.5", guestPort: 564, hostPort: 1 }, /not a free address/],
    [{ guestAddress: "10.0.2.2", guestPort: 564, hostPort: 1 }, /not a free address/],
    [{ guestAddress: "10.0.2.3", guestPort: 564, hostPort: 1 }, /not a free address/],
    [{ guestAddress: "10.0.2.256", guestPort: 564, hostPort: 1 }, /not a free address/],
    [{ guestAddress: "10.0.2.15", guestPort: 564, hostPort: 1 }, /DHCP range/],
    [{ guestAddress: "10.0.2.30", guestPort: 564, hostPort: 1 }, /DHCP range/],
    [{ guestAddress: "10.0.2.100", guestPort: 0, hostPort: 1 }, /guest port 0/],
    [{ guestAddress: "10.0.2.100", guestPort: 564, hostPort: 65536 }, /host port 65536/],
  ];
  for (const [forward, message] of bad) {
    assert.throws(() => userNetworkArgs([forward], nc), message, forward.guestAddress);
  }
  assert.doesNotThrow(() =>
    userNetworkArgs([{ guestAddress: "10.0.2.31", guestPort: 1, hostPort: 1 }], nc)
  );
  const twice = { guestAddress: "10.0.2.100", guestPort: 564, hostPort: 1 };
  assert.throws(() => userNetworkArgs([twice, { ...twice, hostPort: 2 }], nc), /given twice/);
  assert.throws(
    () => userNetworkArgs([twice], ["/opt/my dir/busybox", "nc"]),
    /cannot go into a guestfwd/,
  );
  assert.throws(() => userNetworkArgs([twice], ["busybox,x", "nc"]), /cannot go into a guestfwd/);
});

Deno.test("console text becomes lines however it is chunked, without carriage returns", () => {
  const splitter = new LineSplitter();
  assert.deepEqual(splitter.push("[    1.0] hello\r\n@@TE"), ["[    1.0] hello"]);
  assert.deepEqual(splitter.push("ST ok one\r"), []);
  assert.deepEqual(splitter.push("\n\nlast"), ["@@TEST ok one", ""]);
  assert.deepEqual(splitter.end(), ["last"]);
  assert.deepEqual(splitter.end(), []);
});

Deno.test("@@METRIC lines give numbers by name; a later line wins; malformed lines are ignored", () => {
  const log = [
    "[   40.1] systemd[1]: Reached target multi-user.target",
    "@@METRIC multi_user_s 41.250\r",
    "garbage before @@METRIC usr_read_s 82",
    "@@METRIC failed_units 0",
    "@@METRIC usr_read_s 81.5",
    "@@METRIC spaced name 3",
    "@@METRIC not_a_number abc",
    "@@METRIC tiny 1e-3",
  ].join("\n");
  assert.deepEqual(parseMetrics(log), {
    multi_user_s: 41.25,
    usr_read_s: 81.5,
    failed_units: 0,
    tiny: 0.001,
  });
});

Deno.test("the console reader reports lines as they come, waits for markers, and parses reports", async () => {
  const seen: string[] = [];
  const script = [
    "echo 'booting'",
    "printf '@@TEST ok first\\r\\n'",
    "echo '@@METRIC multi_user_s 12.5'",
    "echo '@@TEST fail second: it broke'",
    "printf 'no newline at the end'",
  ].join("; ");
  const vm = spawnConsole("sh", ["-c", script], {
    timeoutMs: 30_000,
    onLine: (line) => seen.push(line.text),
  });
  const marker = await vm.waitForLine(/@@METRIC multi_user/, 30_000);
  assert.equal(marker.text, "@@METRIC multi_user_s 12.5");
  assert.ok(marker.atMs >= 0);
  const result = await vm.result;
  assert.deepEqual(seen, [
    "booting",
    "@@TEST ok first",
    "@@METRIC multi_user_s 12.5",
    "@@TEST fail second: it broke",
    "no newline at the end",
  ]);
  assert.deepEqual(result.results, [
    { name: "first", ok: true, detail: "" },
    { name: "second", ok: false, detail: "it broke" },
  ]);
  assert.deepEqual(result.metrics, { multi_user_s: 12.5 });
  assert.equal(result.qemuExitCode, 0);
  assert.equal(result.timedOut, false);
  // A line already seen still satisfies a later wait; after the exit a new wait fails at once.
  assert.equal((await vm.waitForLine(/^booting$/, 1)).text, "booting");
  await assert.rejects(vm.waitForLine(/never printed/, 30_000), /exited before/);
});

Deno.test("the console reader kills its process at the timeout and fails pending waits", async () => {
  const vm = spawnConsole("sh", ["-c", "echo started; exec sleep 60"], { timeoutMs: 300 });
  const pending = vm.waitForLine(/never printed/, 60_000);
  const result = await vm.result;
  await assert.rejects(pending, /exited before a console line matched/);
  assert.equal(result.timedOut, true);
  assert.equal(result.killed, false);
  assert.equal(result.qemuExitCode, null);
  assert.ok(result.totalMs < 30_000, `took ${result.totalMs} ms`);
  assert.deepEqual(result.lines.map((l) => l.text), ["started"]);
});

Deno.test("kill() stops the process and a wait bounded by its own timeout fails in time", async () => {
  const vm = spawnConsole("sh", ["-c", "echo up; exec sleep 60"], { timeoutMs: 60_000 });
  await vm.waitForLine(/^up$/, 30_000);
  await assert.rejects(vm.waitForLine(/never printed/, 50), /within 50 ms/);
  vm.kill();
  const result = await vm.result;
  assert.equal(result.killed, true);
  assert.equal(result.timedOut, false);
});

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
