/**
 * Builds, caches and copies the Debian bookworm root tree that VM boots serve over the network
 * (tools/boot_vm.ts boots it; the root file system reaches the guest as /dev/nbd0).
 *
 * The tree is built once with mmdebstrap (variant minbase, systemd as PID 1, both initramfs
 * builders, Debian's own kernel of exactly the version tools/kernel.ts boots) into the VM cache
 * (`$NBD9_CACHE`, else `~/.cache/9nbd/vm`), in a directory named by a hash of the whole
 * mmdebstrap command line: change a package, a source or a hook and the next call builds anew.
 * Tests never change the cached tree: they take a copy ({@linkcode copyDebianRoot}), change the
 * copy (files, packages, an initrd built inside it with {@linkcode withChroot}), make an ext4
 * image of it with `mke2fs -d` (no loop mount) and remove the copy ({@linkcode removeTree}).
 *
 * The build never runs mkinitramfs: `update-initramfs` is diverted to a no-op while packages
 * are configured (the kernel and half a dozen triggers would each build a MODULES=most initrd,
 * most of a naive build's time) and restored afterwards. Initrds are built per test, in a copy,
 * with whatever hooks that test installs; the tree sets MODULES=netboot for initramfs-tools.
 *
 * Everything here needs root (mmdebstrap's root mode, chroot, mounts).
 *
 * @module
 */

import { ensureKernel, vmCacheDir } from "./kernel.ts";

/** The Debian release of the root. */
export const DEBIAN_SUITE = "bookworm";

/**
 * Where packages come from. The kernel ABI package the current `linux-image-amd64` names is
 * only in bookworm-security, so that archive must be listed.
 */
export const DEBIAN_SOURCES: readonly string[] = [
  "deb http://deb.debian.org/debian bookworm main",
  "deb http://deb.debian.org/debian bookworm-updates main",
  "deb http://deb.debian.org/debian-security bookworm-security main",
];

/**
 * Packages installed on top of minbase (the kernel image is added per recipe). Not nbd-client:
 * its initramfs hook would also act on a `root=/dev/nbd0` meant for 9nbd; the comparator installs
 * it into a copy. Its two libraries are here so that a copy can `dpkg -i` it without apt.
 */
export const ROOT_PACKAGES: readonly string[] = [
  "systemd-sysv",
  "udev",
  "initramfs-tools",
  "busybox",
  "zstd",
  "dracut-core",
  "dracut-network",
  "procps",
  "e2fsprogs",
  "iproute2",
  "isc-dhcp-client",
  "iputils-arping",
  "kmod",
  "libnl-3-200",
  "libnl-genl-3-200",
];

/** Where `update-initramfs` waits while the build runs. */
const DIVERTED_UPDATE_INITRAMFS = "/usr/sbin/update-initramfs.9nbd-build";

/** Before any package but the essential ones is configured: make update-initramfs a no-op. */
const DIVERT_UPDATE_INITRAMFS_HOOK = [
  `chroot "$1" dpkg-divert --quiet --local --rename --divert ${DIVERTED_UPDATE_INITRAMFS}`,
  "--add /usr/sbin/update-initramfs &&",
  `printf '#!/bin/sh\\nexit 0\\n' > "$1/usr/sbin/update-initramfs" &&`,
  `chmod 755 "$1/usr/sbin/update-initramfs"`,
].join(" ");

/** After everything is installed: the real update-initramfs back, and the tree's own settings. */
const CUSTOMIZE_HOOKS: readonly string[] = [
  [
    `rm -f "$1/usr/sbin/update-initramfs" &&`,
    `chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs`,
  ].join(" "),
  // netboot: the base modules (ext4, virtio_pci) and network drivers, not every block driver.
  `mkdir -p "$1/etc/initramfs-tools/conf.d" && ` +
  `echo MODULES=netboot > "$1/etc/initramfs-tools/conf.d/9nbd-root"`,
  // mmdebstrap copies the build machine's hostname and resolver; the node has neither.
  `echo 9nbd-node > "$1/etc/hostname" && rm -f "$1/etc/resolv.conf" && : > "$1/etc/resolv.conf"`,
  `echo '/dev/nbd0 / ext4 defaults 0 0' > "$1/etc/fstab"`,
];

/** Documentation and translations nothing in the VM reads; leaving them out saves unpacking. */
const PATH_EXCLUDES = ["/usr/share/man/*", "/usr/share/locale/*", "/usr/share/info/*"];

/** mmdebstrap's own hook that runs dpkg under eatmydata (no fsync while unpacking). */
const EATMYDATA_HOOK_DIR = "/usr/share/mmdebstrap/hooks/eatmydata";

/** What a root tree is built from. */
export interface DebianRootRecipe {
  suite: string;
  sources: readonly string[];
  /** Packages on top of minbase, the kernel image included. */
  packages: readonly string[];
  /** Kernel release installed in the tree, e.g. `6.1.0-57-amd64`. */
  kernelVersion: string;
  /** Run dpkg under eatmydata (when mmdebstrap ships the hook). */
  eatmydata: boolean;
}

/** The recipe for a root whose kernel is `kernelVersion`. */
export function debianRootRecipe(kernelVersion: string, eatmydata: boolean): DebianRootRecipe {
  return {
    suite: DEBIAN_SUITE,
    sources: DEBIAN_SOURCES,
    packages: [...ROOT_PACKAGES, `linux-image-${kernelVersion}`],
    kernelVersion,
    eatmydata,
  };
}

/** The mmdebstrap command line (without the program name) that builds `recipe` into `targetDir`. */
export function mmdebstrapArgs(recipe: DebianRootRecipe, targetDir: string): string[] {
  return [
    "--variant=minbase",
    "--mode=root",
    "--format=directory",
    `--include=${recipe.packages.join(",")}`,
    '--aptopt=Acquire::Retries "3"',
    "--dpkgopt=force-unsafe-io",
    ...PATH_EXCLUDES.map((p) => `--dpkgopt=path-exclude=${p}`),
    ...(recipe.eatmydata ? [`--hook-dir=${EATMYDATA_HOOK_DIR}`] : []),
    `--essential-hook=${DIVERT_UPDATE_INITRAMFS_HOOK}`,
    ...CUSTOMIZE_HOOKS.map((hook) => `--customize-hook=${hook}`),
    recipe.suite,
    targetDir,
    ...recipe.sources,
  ];
}

/** The stand-in for the target directory when hashing, so the key does not depend on it. */
const TARGET_PLACEHOLDER = "TARGET";

/**
 * The cache key of `recipe`: the first 16 hex digits of the SHA-256 of its whole mmdebstrap
 * command line, so any change to what is built changes the key.
 */
export async function recipeKey(recipe: DebianRootRecipe): Promise<string> {
  const text = JSON.stringify(mmdebstrapArgs(recipe, TARGET_PLACEHOLDER));
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).subarray(0, 8), (b) => b.toString(16).padStart(2, "0"))
    .join("");
}

/** A built root tree in the cache. Never change `dir`: copy it. */
export interface DebianRoot {
  /** The tree. */
  dir: string;
  /** Kernel release of the tree's kernel and modules. */
  kernelVersion: string;
  /** The recipe's cache key. */
  key: string;
}

/** Options for {@linkcode ensureDebianRoot}. */
export interface EnsureDebianRootOptions {
  /** Kernel release to install; default the one tools/kernel.ts boots. */
  kernelVersion?: string;
  /** Progress lines (a build takes minutes). */
  log?: (line: string) => void;
  /** Bound on the build; default 40 minutes. */
  buildTimeoutMs?: number;
}

/** Written last into a finished build, so a half-built tree is never used. */
const COMPLETE_MARKER = ".complete";

/**
 * Returns the cached root tree for the current recipe, building it first if needed (minutes).
 *
 * Safe to call concurrently: each builder works in its own temporary directory and renames it
 * into place; a loser of the race removes its copy and uses the winner's.
 *
 * @throws Error in one line when not root, or when mmdebstrap fails (with its last lines)
 */
export async function ensureDebianRoot(options: EnsureDebianRootOptions = {}): Promise<DebianRoot> {
  const log = options.log ?? (() => {});
  if (Deno.uid() !== 0) throw new Error("building the Debian root needs root (mmdebstrap, chroot)");
  const kernelVersion = options.kernelVersion ?? (await ensureKernel()).version;
  const recipe = debianRootRecipe(kernelVersion, await exists(EATMYDATA_HOOK_DIR));
  const key = await recipeKey(recipe);
  const cacheDir = vmCacheDir();
  const finalDir = `${cacheDir}/debian-root-${key}`;
  const root = { dir: `${finalDir}/root`, kernelVersion, key };
  if (await exists(`${finalDir}/${COMPLETE_MARKER}`)) return root;

  await Deno.mkdir(cacheDir, { recursive: true });
  const workDir = await Deno.makeTempDir({ dir: cacheDir, prefix: `.build-debian-root-${key}-` });
  try {
    const started = performance.now();
    log(`debian root: building ${DEBIAN_SUITE} with kernel ${kernelVersion} (recipe ${key})`);
    await runCommand("mmdebstrap", mmdebstrapArgs(recipe, `${workDir}/root`), {
      timeoutMs: options.buildTimeoutMs ?? 40 * 60_000,
    });
    await Deno.writeTextFile(`${workDir}/${COMPLETE_MARKER}`, `${key}\n`);
    try {
      await Deno.rename(workDir, finalDir);
    } catch (err) {
      // Another build finished first; its tree is as good as ours.
      if (!(await exists(`${finalDir}/${COMPLETE_MARKER}`))) throw err;
    }
    log(`debian root: built in ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    await removeTree(workDir).catch(() => {});
  }
  return root;
}

/**
 * A new empty directory for per-test copies and images, on the same file system as the cache
 * (so `cp --reflink=auto` can share blocks where the file system allows).
 */
export async function makeWorkDir(prefix: string): Promise<string> {
  const parent = `${vmCacheDir()}/work`;
  await Deno.mkdir(parent, { recursive: true });
  return await Deno.makeTempDir({ dir: parent, prefix });
}

/**
 * Copies the cached tree to `destDir` (which must not exist) for one test to change:
 * `cp -a --reflink=auto`, so it costs no blocks where the file system can share them.
 */
export async function copyDebianRoot(root: DebianRoot, destDir: string): Promise<void> {
  if (await exists(destDir)) throw new Error(`${destDir} already exists`);
  await runCommand("cp", ["-a", "--reflink=auto", root.dir, destDir], { timeoutMs: 600_000 });
}

/** A file to put into a tree. */
export interface TreeFile {
  /** Absolute path inside the tree, e.g. `/etc/systemd/system/x.service`. */
  path: string;
  /** File contents, or the target when `symlink` is set. */
  contents: string;
  /** Permission bits; default 0o644. */
  mode?: number;
  /** Make a symbolic link to `contents` instead of a file. */
  symlink?: boolean;
}

/** Writes `files` into the tree at `rootDir`, creating parent directories. */
export async function writeTreeFiles(rootDir: string, files: readonly TreeFile[]): Promise<void> {
  for (const file of files) {
    if (!file.path.startsWith("/") || file.path.split("/").includes("..")) {
      throw new Error(`tree file path must be absolute without '..': ${file.path}`);
    }
    const target = `${rootDir}${file.path}`;
    await Deno.mkdir(target.slice(0, target.lastIndexOf("/")), { recursive: true });
    await Deno.remove(target).catch(() => {});
    if (file.symlink) {
      await Deno.symlink(file.contents, target);
    } else {
      await Deno.writeTextFile(target, file.contents, { mode: file.mode ?? 0o644 });
      await Deno.chmod(target, file.mode ?? 0o644);
    }
  }
}

/** Runs commands inside a chroot with /proc, /sys and /dev mounted. */
export interface Chroot {
  /** The tree. */
  rootDir: string;
  /**
   * Runs `argv` inside the tree with a clean environment (PATH, HOME, LANG=C.UTF-8,
   * DEBIAN_FRONTEND=noninteractive, plus `env`).
   *
   * @returns its stdout
   * @throws Error with the command, exit code and the end of its output when it fails or
   *   outlives `timeoutMs` (default 10 minutes)
   */
  run(argv: string[], options?: { env?: Record<string, string>; timeoutMs?: number }): Promise<
    string
  >;
}

/** The mounts a chroot gets, in mount order: what mmdebstrap gives its hooks, and dracut needs. */
const CHROOT_MOUNTS: readonly { target: string; args: string[] }[] = [
  { target: "proc", args: ["-t", "proc", "proc"] },
  { target: "sys", args: ["-t", "sysfs", "sysfs"] },
  { target: "dev", args: ["--bind", "/dev"] },
];

/**
 * Mounts /proc, /sys and /dev into the tree at `rootDir`, calls `fn`, and unmounts them again
 * whatever `fn` does (lazily if a process still holds one). Use it for mkinitramfs, dracut and
 * dpkg inside a copy, never on the cached tree.
 */
export async function withChroot<T>(
  rootDir: string,
  fn: (chroot: Chroot) => Promise<T>,
): Promise<T> {
  const mounted: string[] = [];
  try {
    for (const mount of CHROOT_MOUNTS) {
      const target = `${rootDir}/${mount.target}`;
      await Deno.mkdir(target, { recursive: true });
      await runCommand("mount", [...mount.args, target], { timeoutMs: 30_000 });
      mounted.push(target);
    }
    return await fn({
      rootDir,
      run: (argv, options = {}) =>
        runCommand("chroot", [rootDir, ...argv], {
          clearEnv: true,
          env: {
            PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            HOME: "/root",
            LANG: "C.UTF-8",
            DEBIAN_FRONTEND: "noninteractive",
            ...options.env,
          },
          timeoutMs: options.timeoutMs ?? 600_000,
        }),
    });
  } finally {
    for (const target of mounted.reverse()) {
      await runCommand("umount", [target], { timeoutMs: 30_000 }).catch(() =>
        runCommand("umount", ["--lazy", target], { timeoutMs: 30_000 })
      );
    }
  }
}

/**
 * Installs Debian packages into the tree at `rootDir` from .debs fetched on the host with
 * `apt-get download` (the tree keeps no package lists), with `dpkg -i` in a chroot. Their
 * dependencies must already be in the tree. The tree has no initrd yet, so an initramfs
 * trigger has nothing to update: build the initrd afterwards.
 */
export async function installDebs(rootDir: string, packages: readonly string[]): Promise<void> {
  const downloadDir = `${rootDir}/var/cache/apt/archives/9nbd-install`;
  await Deno.mkdir(downloadDir, { recursive: true });
  try {
    // apt drops to the _apt user to download unless told otherwise, and _apt cannot write here.
    await runCommand("apt-get", ["-o", "APT::Sandbox::User=root", "download", ...packages], {
      cwd: downloadDir,
      timeoutMs: 300_000,
    });
    const debs: string[] = [];
    for await (const entry of Deno.readDir(downloadDir)) {
      if (entry.name.endsWith(".deb")) {
        debs.push(`/var/cache/apt/archives/9nbd-install/${entry.name}`);
      }
    }
    await withChroot(rootDir, (chroot) => chroot.run(["dpkg", "--install", ...debs.sort()]));
  } finally {
    await Deno.remove(downloadDir, { recursive: true }).catch(() => {});
  }
}

/** Options for {@linkcode makeExt4Image}. */
export interface Ext4ImageOptions {
  /** Size of the (sparse) image file; default 2 GiB. */
  sizeBytes?: number;
  /** File system label; default `root`. */
  label?: string;
}

/** Makes an ext4 image file of the tree at `treeDir` with `mke2fs -d` (no mount). */
export async function makeExt4Image(
  treeDir: string,
  imagePath: string,
  options: Ext4ImageOptions = {},
): Promise<void> {
  const sizeBytes = options.sizeBytes ?? 2 * 2 ** 30;
  await runCommand("mke2fs", [
    "-q",
    "-F",
    "-t",
    "ext4",
    "-L",
    options.label ?? "root",
    "-d",
    treeDir,
    imagePath,
    `${Math.floor(sizeBytes / 1024)}k`,
  ], { timeoutMs: 600_000 });
}

/**
 * `sha256sum` lines (`HASH  /usr/...`) of every regular file under `subdir` of the tree, sorted
 * by path, for the guest to check with `sha256sum -c` against what it reads over the network.
 */
export async function checksumTree(rootDir: string, subdir: string): Promise<string> {
  const list = await runCommand("find", [subdir.replace(/^\/+/, ""), "-type", "f", "-print0"], {
    cwd: rootDir,
    timeoutMs: 120_000,
  });
  const paths = list.split("\0").filter((p) => p !== "").sort();
  const lines: string[] = [];
  // Batches keep each command line well under the kernel's argument limit.
  for (let i = 0; i < paths.length; i += 500) {
    const out = await runCommand("sha256sum", ["--", ...paths.slice(i, i + 500)], {
      cwd: rootDir,
      timeoutMs: 600_000,
    });
    for (const line of out.split("\n")) {
      // `HASH  path` → `HASH  /path`, checked from the guest's `/`.
      if (line !== "") lines.push(line.replace(/^([0-9a-f]{64}) {2}/, "$1  /"));
    }
  }
  return lines.join("\n") + "\n";
}

/**
 * Removes a tree made by {@linkcode copyDebianRoot} or a work dir. Refuses while anything is
 * mounted below it (deleting through a bind mount of /dev would delete the host's devices),
 * and never crosses into another file system.
 */
export async function removeTree(dir: string): Promise<void> {
  if (!(await exists(dir))) return;
  const real = await Deno.realPath(dir);
  const mounts = (await Deno.readTextFile("/proc/self/mountinfo")).split("\n")
    .map((line) => line.split(" ")[4])
    .filter((point) => point !== undefined && (point === real || point.startsWith(`${real}/`)));
  if (mounts.length > 0) throw new Error(`not removing ${dir}: ${mounts[0]} is mounted`);
  await runCommand("rm", ["-rf", "--one-file-system", "--", real], { timeoutMs: 600_000 });
}

/** Options for {@linkcode runCommand}. */
export interface RunCommandOptions {
  cwd?: string;
  env?: Record<string, string>;
  /** Start from an empty environment (plus `env`). */
  clearEnv?: boolean;
  /** Kill the command (SIGKILL) after this long and fail. */
  timeoutMs: number;
}

/**
 * Runs a command to completion and returns its stdout.
 *
 * @throws Error naming the command, its exit code (or the timeout) and its last output lines
 */
export async function runCommand(
  cmd: string,
  args: string[],
  options: RunCommandOptions,
): Promise<string> {
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command(cmd, {
      args,
      cwd: options.cwd,
      env: options.env,
      clearEnv: options.clearEnv,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (err) {
    throw new Error(`cannot run ${cmd}: ${err instanceof Error ? err.message : err}`);
  }
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  }, options.timeoutMs);
  try {
    const output = await child.output();
    const decoder = new TextDecoder();
    const stdout = decoder.decode(output.stdout);
    if (output.success && !timedOut) return stdout;
    const tail = (decoder.decode(output.stderr) + stdout).trim().split("\n").slice(-15).join("\n");
    const why = timedOut
      ? `was killed after ${Math.round(options.timeoutMs / 1000)} s`
      : `failed (exit ${output.code})`;
    throw new Error(`${cmd} ${why}: ${tail}`);
  } finally {
    clearTimeout(timer);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}
