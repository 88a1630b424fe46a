/**
 * Fetches and unpacks Debian's own kernel for the test VM.
 *
 * The development and CI machines run a kernel without NBD and 9P, so real-kernel tests boot
 * Debian's packaged kernel under QEMU instead. The package is downloaded with `apt-get download`
 * (the only registry we can reach), unpacked with `dpkg -x` and indexed with `depmod`, into a cache
 * outside the repository so repeated runs reuse it.
 *
 * @module
 */

import { aptUpdateOnce } from "./packages.ts";

/** Paths of an unpacked Debian kernel, ready to boot. */
export interface Kernel {
  /** Kernel release as `uname -r` reports it in the guest, e.g. `6.1.0-56-amd64`. */
  version: string;
  /** The bzImage to pass to `qemu -kernel`. */
  vmlinuz: string;
  /** `…/lib/modules/<version>`, with `modules.dep` built by depmod. */
  modulesDir: string;
}

/** Where downloaded kernels live: `$NBD9_CACHE`, else `${XDG_CACHE_HOME:-$HOME/.cache}/9nbd/vm`. */
export function vmCacheDir(): string {
  const explicit = Deno.env.get("NBD9_CACHE");
  if (explicit) return explicit;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  if (xdg) return `${xdg}/9nbd/vm`;
  const home = Deno.env.get("HOME");
  if (!home) throw new Error("neither NBD9_CACHE, XDG_CACHE_HOME nor HOME is set");
  return `${home}/.cache/9nbd/vm`;
}

/** Runs a command to completion; throws with its stderr when it fails. */
async function run(cmd: string, args: string[], cwd?: string): Promise<string> {
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(cmd, { args, cwd, stdin: "null" }).output();
  } catch (err) {
    throw new Error(`cannot run ${cmd}: ${err instanceof Error ? err.message : err}`, {
      cause: err,
    });
  }
  const decoder = new TextDecoder();
  if (!output.success) {
    const stderr = decoder.decode(output.stderr).trim();
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${output.code}): ${stderr}`);
  }
  return decoder.decode(output.stdout);
}

/**
 * Asks apt which kernel `linux-image-amd64` currently points at.
 *
 * @returns the release, e.g. `6.1.0-56-amd64`
 */
export async function debianKernelVersion(): Promise<string> {
  const out = await run("apt-cache", ["depends", "linux-image-amd64"]);
  // The meta package's only real dependency is the versioned image; skip the meta name itself.
  for (const match of out.matchAll(/Depends:\s*linux-image-(\S+)/g)) {
    if (match[1] !== "amd64") return match[1];
  }
  throw new Error(`apt-cache depends linux-image-amd64 names no kernel image:\n${out}`);
}

function kernelPaths(dir: string, version: string): Kernel {
  return {
    version,
    vmlinuz: `${dir}/boot/vmlinuz-${version}`,
    modulesDir: `${dir}/lib/modules/${version}`,
  };
}

/** The marker written last, so a directory without it is never mistaken for a complete unpack. */
const COMPLETE_MARKER = ".complete";

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Kernels already unpacked in the cache, newest modification first. */
async function cachedKernels(cacheDir: string): Promise<Kernel[]> {
  const found: { kernel: Kernel; mtimeMs: number }[] = [];
  try {
    for await (const entry of Deno.readDir(cacheDir)) {
      const match = /^kernel-(.+)$/.exec(entry.name);
      if (!entry.isDirectory || !match) continue;
      const dir = `${cacheDir}/${entry.name}`;
      if (!(await exists(`${dir}/${COMPLETE_MARKER}`))) continue;
      const mtimeMs = (await Deno.stat(dir)).mtime?.getTime() ?? 0;
      found.push({ kernel: kernelPaths(dir, match[1]), mtimeMs });
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return found.sort((a, b) => b.mtimeMs - a.mtimeMs).map((f) => f.kernel);
}

/**
 * Returns Debian's current kernel, downloading and unpacking it on first use.
 *
 * Safe to call concurrently: each caller unpacks into its own temporary directory and renames
 * it into place; the loser of a race deletes its copy and uses the winner's. When apt cannot
 * say which kernel is current (no package lists, no network), the newest cached kernel is used.
 */
export async function ensureKernel(): Promise<Kernel> {
  const cacheDir = vmCacheDir();
  let version: string;
  try {
    version = await debianKernelVersion();
  } catch (err) {
    const cached = await cachedKernels(cacheDir);
    if (cached.length > 0) return cached[0];
    // A fresh machine may have no package lists yet: fetch them (once) and ask again.
    if (Deno.uid() !== 0 || (await aptUpdateOnce()) !== null) throw err;
    version = await debianKernelVersion();
  }

  const finalDir = `${cacheDir}/kernel-${version}`;
  if (await exists(`${finalDir}/${COMPLETE_MARKER}`)) return kernelPaths(finalDir, version);

  await Deno.mkdir(cacheDir, { recursive: true });
  const workDir = await Deno.makeTempDir({ dir: cacheDir, prefix: `.unpack-${version}-` });
  try {
    const downloadDir = `${workDir}/download`;
    const rootDir = `${workDir}/root`;
    await Deno.mkdir(downloadDir);
    // apt drops to the _apt user to download unless told otherwise, and _apt cannot write into
    // our private temporary directory.
    await run(
      "apt-get",
      ["-o", "APT::Sandbox::User=root", "download", `linux-image-${version}`],
      downloadDir,
    );
    const debs: string[] = [];
    for await (const entry of Deno.readDir(downloadDir)) {
      if (entry.name.endsWith(".deb")) debs.push(`${downloadDir}/${entry.name}`);
    }
    if (debs.length !== 1) throw new Error(`expected one .deb, apt-get left ${debs.length}`);
    await run("dpkg", ["-x", debs[0], rootDir]);
    await run("depmod", ["-b", rootDir, version]);
    const kernel = kernelPaths(rootDir, version);
    for (const path of [kernel.vmlinuz, `${kernel.modulesDir}/modules.dep`]) {
      if (!(await exists(path))) throw new Error(`unpacked kernel lacks ${path}`);
    }
    await Deno.writeTextFile(`${rootDir}/${COMPLETE_MARKER}`, `${version}\n`);
    try {
      await Deno.rename(rootDir, finalDir);
    } catch (err) {
      // Another run finished first; its copy is as good as ours.
      if (!(await exists(`${finalDir}/${COMPLETE_MARKER}`))) throw err;
    }
  } finally {
    await Deno.remove(workDir, { recursive: true }).catch(() => {});
  }
  return kernelPaths(finalDir, version);
}

/**
 * Kernel modules to load, in load order, so that each of `names` and all it depends on is loaded.
 *
 * @param modulesDir `…/lib/modules/<version>` containing `modules.dep`
 * @param names module names as modprobe takes them (`-` and `_` are interchangeable)
 * @returns paths relative to `modulesDir`, dependencies before dependents, each once
 */
export async function moduleLoadOrder(modulesDir: string, names: string[]): Promise<string[]> {
  const deps = new Map<string, string[]>();
  const byName = new Map<string, string>();
  for (const line of (await Deno.readTextFile(`${modulesDir}/modules.dep`)).split("\n")) {
    const colon = line.indexOf(":");
    if (colon < 0) continue;
    const path = line.slice(0, colon);
    deps.set(path, line.slice(colon + 1).trim().split(/\s+/).filter((s) => s));
    byName.set(moduleName(path), path);
  }
  const order: string[] = [];
  const visit = (path: string) => {
    if (order.includes(path)) return;
    // modules.dep lists the full closure with the first-needed module last.
    for (const dep of [...(deps.get(path) ?? [])].reverse()) {
      if (!order.includes(dep)) order.push(dep);
    }
    order.push(path);
  };
  for (const name of names) {
    const path = byName.get(name.replaceAll("-", "_"));
    if (!path) throw new Error(`module ${name} not in ${modulesDir}/modules.dep`);
    visit(path);
  }
  return order;
}

/** `kernel/fs/9p/9p.ko.xz` → `9p`; modprobe treats `-` and `_` alike, so normalise to `_`. */
export function moduleName(path: string): string {
  const base = path.slice(path.lastIndexOf("/") + 1);
  return base.replace(/\.ko(\.(xz|zst|gz))?$/, "").replaceAll("-", "_");
}
