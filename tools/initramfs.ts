/**
 * Builds the test VM's initramfs: busybox-static, the few modules needed to reach the host's root
 * over virtio-9p, and an `/init` that turns the host root into the guest's root and runs one
 * guest script.
 *
 * The cpio (newc) archive is written here rather than by `cpio`, which is not installed on the
 * CI image, and this way the `/dev/console` node can be added without touching the host's /dev.
 *
 * @module
 */

import { type Kernel, moduleLoadOrder, moduleName } from "./kernel.ts";

/** The virtio-9p mount tag that `vm.ts` gives QEMU's `-virtfs` for the host root. */
export const HOST_ROOT_TAG = "hostroot";

/** Directory in the guest (a tmpfs) holding the guest script and its environment. */
export const GUEST_RUN_DIR = "/run/9nbd-vm";

/**
 * Modules the initramfs loads itself, before any of the host's files are reachable:
 * the virtio PCI transport, 9P over virtio, and overlayfs to make the read-only host root
 * writable (writes land in RAM) so `/lib/modules/<version>` can point at the unpacked kernel.
 */
const INITRAMFS_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/** Files and settings for one guest run. */
export interface InitramfsOptions {
  /** The kernel whose modules go into the archive (and whose modules dir the guest links). */
  kernel: Kernel;
  /** Shell script run as root by `/bin/sh` in the chroot; its exit code is reported. */
  script: string;
  /** Variables exported to the script. */
  env?: Record<string, string>;
}

/** One cpio archive member: a directory, regular file (`data`) or device node (`rdev*`). */
export interface CpioEntry {
  name: string;
  mode: number;
  data?: Uint8Array;
  rdevMajor?: number;
  rdevMinor?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;

const encoder = new TextEncoder();

/** Serialises entries as a cpio "newc" archive, the format the kernel's initramfs unpacker reads. */
export function cpioNewc(entries: CpioEntry[]): Uint8Array {
  const chunks: Uint8Array[] = [];
  let length = 0;
  const push = (bytes: Uint8Array) => {
    chunks.push(bytes);
    length += bytes.length;
    const pad = (4 - (length % 4)) % 4;
    if (pad) {
      chunks.push(new Uint8Array(pad));
      length += pad;
    }
  };
  const hex = (n: number) => n.toString(16).padStart(8, "0");
  let ino = 1;
  for (const entry of [...entries, { name: "TRAILER!!!", mode: 0 }] as CpioEntry[]) {
    const data = entry.data ?? new Uint8Array();
    const name = encoder.encode(entry.name + "\0");
    const isDir = (entry.mode & 0o170000) === S_IFDIR;
    const fields = [
      entry.name === "TRAILER!!!" ? 0 : ino++,
      entry.mode,
      0, // uid
      0, // gid
      isDir ? 2 : 1, // nlink
      0, // mtime: fixed, so equal inputs give equal archives
      data.length,
      0, // devmajor
      0, // devminor
      entry.rdevMajor ?? 0,
      entry.rdevMinor ?? 0,
      name.length,
      0, // check (unused in newc)
    ];
    // The 110-byte header and the name are padded together, not each on its own.
    const header = encoder.encode("070701" + fields.map(hex).join(""));
    const headerAndName = new Uint8Array(header.length + name.length);
    headerAndName.set(header);
    headerAndName.set(name, header.length);
    push(headerAndName);
    if (data.length) push(data);
  }
  const out = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

/** Gzips bytes with the platform's CompressionStream (the kernel accepts gzip initramfs). */
export async function gzip(bytes: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([bytes as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("gzip"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** True when an ELF64 image has no program interpreter, i.e. is statically linked. */
function isStaticElf(bytes: Uint8Array): boolean {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0) !== 0x7f454c46 || bytes[4] !== 2) return false; // ELF64 only
  const phoff = Number(view.getBigUint64(0x20, true));
  const phentsize = view.getUint16(0x36, true);
  const phnum = view.getUint16(0x38, true);
  const PT_INTERP = 3;
  for (let i = 0; i < phnum; i++) {
    if (view.getUint32(phoff + i * phentsize, true) === PT_INTERP) return false;
  }
  return true;
}

/**
 * Finds a statically linked busybox (Debian package `busybox-static`) on PATH.
 *
 * @returns its bytes and path
 */
export async function findStaticBusybox(): Promise<{ path: string; bytes: Uint8Array }> {
  const dirs = (Deno.env.get("PATH") ?? "").split(":").filter((d) => d);
  for (const dir of [...dirs, "/bin", "/usr/bin"]) {
    const path = `${dir}/busybox`;
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(path);
    } catch {
      continue;
    }
    // A dynamically linked busybox cannot run in the initramfs, which has no libc.
    if (isStaticElf(bytes)) return { path, bytes };
  }
  throw new Error("no statically linked busybox on PATH (install Debian package busybox-static)");
}

/** Reads a module, decompressing `.ko.xz`/`.ko.zst`/`.ko.gz`: busybox insmod loads only plain ELF. */
async function readModule(path: string): Promise<Uint8Array> {
  const tools: [string, string, string[]][] = [
    [".xz", "xz", ["-dc", path]],
    [".zst", "zstd", ["-dcq", path]],
    [".gz", "gzip", ["-dc", path]],
  ];
  for (const [suffix, cmd, args] of tools) {
    if (!path.endsWith(suffix)) continue;
    const out = await new Deno.Command(cmd, { args, stdin: "null" }).output();
    if (!out.success) {
      throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
    }
    return out.stdout;
  }
  return await Deno.readFile(path);
}

/**
 * Directories the guest needs that may sit under the host's /tmp, which the
 * guest replaces with a fresh tmpfs: this checkout, Deno's binary, Deno's cache.
 */
function pathsUnderTmp(): string[] {
  const repo = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const exe = Deno.execPath();
  const candidates = [repo, exe.slice(0, exe.lastIndexOf("/")), Deno.env.get("DENO_DIR") ?? ""];
  const under = candidates.filter((p) => p.startsWith("/tmp/"));
  // Outermost first, and no path inside another kept one.
  return [...new Set(under)].sort().filter((p, i, all) =>
    !all.slice(0, i).some((q) => p.startsWith(q + "/"))
  );
}

/** Quotes a string for POSIX sh. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/** The initramfs `/init`: mounts the host root as a writable overlay and switches to it. */
function initScript(modules: string[], keep: string[]): string {
  return `#!/bin/busybox sh
/bin/busybox mkdir -p /bin /proc /sys /dev /lower /rw /newroot
/bin/busybox --install -s /bin
export PATH=/bin
# Any failure before the guest script runs is reported as an exit code the host can show.
# sysrq powers off at once without asking anything else to stop; poweroff -f is the fallback.
die() { echo "@@VMERROR $*"; echo "@@EXIT 125"; echo o > /proc/sysrq-trigger; sleep 5; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${modules.map(shellQuote).join(" ")}; do
  insmod "/modules/$m" || die "insmod $m failed"
done
# cache=loose: the host root does not change under a short test run, and uncached 9P makes
# every exec of the host's large binaries (deno) crawl.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose ${HOST_ROOT_TAG} /lower \\
  || die "mounting the host root over virtio-9p failed"
mount -t tmpfs -o mode=0755 tmpfs /rw || die "tmpfs for the overlay failed"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
  || die "overlay over the host root failed"
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
# A fresh /tmp, but the checkout under test (and Deno, its cache) may live under the host's
# /tmp (CI clones anywhere): move those onto the new /tmp at the same paths.
for p in ${keep.map(shellQuote).join(" ")}; do
  mkdir -p "/keep$p" && mount --bind "/newroot$p" "/keep$p" || die "keeping $p failed"
done
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || die "tmpfs on /tmp failed"
for p in ${keep.map(shellQuote).join(" ")}; do
  mkdir -p "/newroot$p" && mount --move "/keep$p" "/newroot$p" || die "moving $p failed"
done
mount -t tmpfs -o mode=0755 tmpfs /newroot/run || die "tmpfs on /run failed"
mkdir -p /newroot${GUEST_RUN_DIR}
cp /vm/env.sh /vm/guest.sh /vm/runner.sh /newroot${GUEST_RUN_DIR}/
ip link set lo up || die "bringing lo up failed"
# switch_root (not chroot in a child) because PID 1 shares its root with the kernel's helper
# threads: only then does the kernel's module autoloading run the host's /sbin/modprobe.
exec switch_root /newroot /bin/sh ${GUEST_RUN_DIR}/runner.sh
`;
}

/** PID 1 after switch_root, run by the host's /bin/sh: runs the guest script, then powers off. */
function runnerScript(kernel: Kernel): string {
  const q = shellQuote;
  return `# PID 1 must never exit (the kernel would panic), so every path ends in poweroff_now.
# Power-off shuts the 9P device down while this shell still runs, so after the trigger it must
# not exec anything from the host root: a failed exec would end PID 1 and panic the kernel.
# Opening a FIFO no one writes blocks using only shell builtins.
poweroff_now() {
  sync
  mkfifo ${GUEST_RUN_DIR}/never
  echo o > /proc/sysrq-trigger
  read -r _ < ${GUEST_RUN_DIR}/never
}
# modprobe reads /lib/modules/$(uname -r); the host has no such directory, so point it at the
# unpacked kernel, visible through the host root at the same path.
release=$(uname -r)
if ! { mkdir -p /lib/modules && { [ -e "/lib/modules/$release" ] ||
  ln -s ${q(kernel.modulesDir)} "/lib/modules/$release"; }; }; then
  echo "@@VMERROR linking the modules dir failed"
  echo "@@EXIT 125"
  poweroff_now
fi
echo "@@BOOTED"
(. ${GUEST_RUN_DIR}/env.sh && cd / && exec /bin/sh ${GUEST_RUN_DIR}/guest.sh) </dev/null
echo "@@EXIT $?"
poweroff_now
`;
}

/**
 * Builds a gzipped initramfs that boots to the host root and runs `options.script`.
 *
 * @returns the archive bytes, for QEMU's `-initrd`
 */
export async function buildInitramfs(options: InitramfsOptions): Promise<Uint8Array> {
  const { kernel, script, env = {} } = options;
  const busybox = await findStaticBusybox();
  const modulePaths = await moduleLoadOrder(kernel.modulesDir, INITRAMFS_MODULES);
  const entries: CpioEntry[] = [
    { name: "bin", mode: S_IFDIR | 0o755 },
    { name: "bin/busybox", mode: S_IFREG | 0o755, data: busybox.bytes },
    // The kernel opens /dev/console for init's stdio before anything can mount devtmpfs.
    { name: "dev", mode: S_IFDIR | 0o755 },
    { name: "dev/console", mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 },
    { name: "modules", mode: S_IFDIR | 0o755 },
    { name: "vm", mode: S_IFDIR | 0o755 },
  ];
  const moduleFiles: string[] = [];
  for (const path of modulePaths) {
    const file = `${moduleName(path)}.ko`;
    moduleFiles.push(file);
    entries.push({
      name: `modules/${file}`,
      mode: S_IFREG | 0o644,
      data: await readModule(`${kernel.modulesDir}/${path}`),
    });
  }
  const envLines = Object.entries(env).map(([key, value]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new Error(`bad env name ${key}`);
    return `export ${key}=${shellQuote(value)}\n`;
  });
  entries.push(
    {
      name: "init",
      mode: S_IFREG | 0o755,
      data: encoder.encode(initScript(moduleFiles, pathsUnderTmp())),
    },
    { name: "vm/runner.sh", mode: S_IFREG | 0o755, data: encoder.encode(runnerScript(kernel)) },
    { name: "vm/env.sh", mode: S_IFREG | 0o644, data: encoder.encode(envLines.join("")) },
    { name: "vm/guest.sh", mode: S_IFREG | 0o755, data: encoder.encode(script) },
  );
  return await gzip(cpioNewc(entries));
}
