import assert from "node:assert/strict";
import { ErrnoError } from "../../lib/errors.ts";
import {
  findFreeDevice,
  LinuxKernelNbd,
  listNbdDevices,
  NbdIoctl,
  nbdIoctlName,
} from "../../lib/kernel/nbd_device.ts";

// Everything here runs unprivileged on a kernel without NBD: the real
// binding is exercised in the VM tier.

Deno.test("ioctl numbers are _IO(0xab, n) from the Linux uapi header", () => {
  assert.deepEqual(Object.values(NbdIoctl), [
    0xab00,
    0xab01,
    0xab02,
    0xab03,
    0xab04,
    0xab05,
    0xab06,
    0xab07,
    0xab08,
    0xab09,
    0xab0a,
  ]);
  assert.equal(nbdIoctlName(NbdIoctl.setSock), "NBD_SET_SOCK");
  assert.equal(nbdIoctlName(NbdIoctl.doIt), "NBD_DO_IT");
  assert.equal(nbdIoctlName(NbdIoctl.setSizeBlocks), "NBD_SET_SIZE_BLOCKS");
  assert.equal(nbdIoctlName(0x1234), "ioctl 0x1234");
});

Deno.test("importing the module opens no library and needs no permission", async () => {
  const url = new URL("../../lib/kernel/nbd_device.ts", import.meta.url).href;
  const script = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      script,
      `import { nbdIoctlName } from ${JSON.stringify(url)};\n` +
        `console.log(nbdIoctlName(0xab03));\n`,
    );
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--no-prompt", "--no-config", script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    assert.equal(new TextDecoder().decode(output.stdout).trim(), "NBD_DO_IT");
  } finally {
    await Deno.remove(script);
  }
});

Deno.test("opening a missing NBD device is ENOENT with the modprobe hint", () => {
  const kernel = new LinuxKernelNbd();
  assert.throws(() => kernel.openDevice("/dev/nbd-missing-test"), (err: unknown) => {
    assert.ok(err instanceof ErrnoError);
    assert.equal(err.code, "ENOENT");
    assert.equal(err.operation, "open /dev/nbd-missing-test");
    assert.match(err.hint, /modprobe nbd/);
    assert.match(err.message, /this kernel has no NBD driver/);
    return true;
  });
});

Deno.test("NBD ioctls on something that is not an NBD device fail with ENOTTY", async () => {
  const kernel = new LinuxKernelNbd({ sysfsRoot: "/nonexistent-sysfs" });
  const fd = kernel.openDevice("/dev/null");
  try {
    assert.throws(
      () => kernel.configure(fd, { sizeBytes: 4096, blockSize: 512, flags: 1 }),
      (err: unknown) => {
        assert.ok(err instanceof ErrnoError);
        assert.equal(err.code, "ENOTTY");
        assert.equal(err.operation, "ioctl NBD_SET_BLKSIZE /dev/null");
        assert.equal(err.hint, "not an NBD device");
        return true;
      },
    );
    assert.throws(() => kernel.setSock(fd, 0), { code: "ENOTTY" });
    assert.throws(() => kernel.clearSock(fd), { code: "ENOTTY" });
    // The nonblocking calls learn their errno through the synchronous follow-up check.
    await assert.rejects(kernel.doIt(fd), (err: unknown) => {
      assert.ok(err instanceof ErrnoError);
      assert.equal(err.code, "ENOTTY");
      assert.equal(err.operation, "ioctl NBD_DO_IT /dev/null");
      return true;
    });
    await assert.rejects(kernel.disconnect(fd), { code: "ENOTTY" });
  } finally {
    kernel.closeFd(fd);
  }
  assert.throws(() => kernel.closeFd(fd), { code: "EBADF" });
});

Deno.test("configure refuses a size that is not a whole number of blocks", () => {
  const kernel = new LinuxKernelNbd();
  assert.throws(
    () => kernel.configure(-1, { sizeBytes: 1000, blockSize: 512, flags: 1 }),
    RangeError,
  );
});

Deno.test("connectUnixSocket connects to a listening Unix socket", async () => {
  const dir = await Deno.makeTempDir({ prefix: "9nbd-test-" });
  const path = `${dir}/nbd.sock`;
  const listener = Deno.listen({ transport: "unix", path });
  const kernel = new LinuxKernelNbd();
  try {
    const accepted = listener.accept();
    const fd = kernel.connectUnixSocket(path);
    assert.ok(fd >= 0);
    const conn = await accepted;
    kernel.closeFd(fd);
    // Closing the raw fd is EOF on the accepted side: it really was that connection.
    assert.equal(await conn.read(new Uint8Array(1)), null);
    conn.close();
  } finally {
    listener.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("connectUnixSocket to a missing path is ENOENT and leaks no fd", () => {
  const kernel = new LinuxKernelNbd();
  const before = [...Deno.readDirSync("/proc/self/fd")].length;
  for (let i = 0; i < 5; i++) {
    assert.throws(() => kernel.connectUnixSocket("/nonexistent-9nbd/sock"), (err: unknown) => {
      assert.ok(err instanceof ErrnoError);
      assert.equal(err.code, "ENOENT");
      assert.equal(err.operation, "connect /nonexistent-9nbd/sock");
      return true;
    });
  }
  assert.equal([...Deno.readDirSync("/proc/self/fd")].length, before);
});

Deno.test("connectUnixSocket refuses a path too long for sockaddr_un", () => {
  const kernel = new LinuxKernelNbd();
  assert.throws(() => kernel.connectUnixSocket(`/tmp/${"x".repeat(120)}`), {
    code: "ENAMETOOLONG",
  });
});

/** A fake /sys/block: each device is [name, pid or undefined, size in sectors]. */
async function fakeSysfs(devices: Array<[string, number | undefined, number]>): Promise<string> {
  const root = await Deno.makeTempDir({ prefix: "9nbd-sysfs-" });
  for (const [name, pid, sectors] of devices) {
    await Deno.mkdir(`${root}/${name}`);
    await Deno.writeTextFile(`${root}/${name}/size`, `${sectors}\n`);
    if (pid !== undefined) await Deno.writeTextFile(`${root}/${name}/pid`, `${pid}\n`);
  }
  return root;
}

Deno.test("findFreeDevice picks the lowest-numbered device with no pid and no size", async () => {
  const root = await fakeSysfs([
    ["nbd0", 1234, 2048],
    ["nbd1", undefined, 2048], // being set up by someone: size set, not running yet
    ["nbd10", undefined, 0],
    ["nbd2", undefined, 0],
    ["loop0", undefined, 0],
  ]);
  try {
    const free = await findFreeDevice({ sysfsRoot: root, devDir: "/dev" });
    assert.deepEqual(free, {
      name: "nbd2",
      index: 2,
      pid: undefined,
      sizeBytes: 0,
      path: "/dev/nbd2",
    });
    const all = await listNbdDevices(root);
    assert.deepEqual(all.map((d) => d.name), ["nbd0", "nbd1", "nbd2", "nbd10"]);
    assert.equal(all[0].pid, 1234);
    assert.equal(all[0].sizeBytes, 2048 * 512);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("findFreeDevice finds nothing when every device is busy or there is no NBD driver", async () => {
  const root = await fakeSysfs([["nbd0", 99, 8], ["nbd1", 100, 8]]);
  try {
    assert.equal(await findFreeDevice({ sysfsRoot: root }), undefined);
    assert.equal(await findFreeDevice({ sysfsRoot: `${root}/absent` }), undefined);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});
