/**
 * The Debian packages each part of the project needs to run, in one list, and
 * the one function that makes sure they are there. `deno task demo`, each tier
 * of `deno task test` and so CI (which runs `deno task test`) all read this
 * list, so what they install cannot drift apart.
 *
 * When something is missing and this process is root on Debian, it is
 * installed with apt-get (one line says what and why); otherwise the caller
 * gets one line saying what to install.
 *
 * @module
 */

/** A Debian package, what the project uses it for, and a command it installs. */
export interface DebianPackage {
  /** The Debian package name. */
  name: string;
  /** What the project uses it for, shown when it is installed. */
  why: string;
  /**
   * A program the package installs. Where there is no dpkg (not Debian), the
   * package counts as present when this program is on PATH; without one it is
   * assumed present, and the code that uses it says so if it is not.
   */
  command?: string;
}

function pkg(name: string, why: string, command?: string): DebianPackage {
  return { name, why, command };
}

const qemu = pkg("qemu-system-x86", "QEMU, to boot Debian's kernel", "qemu-system-x86_64");
const busybox = pkg("busybox-static", "the VM's initramfs shell", "busybox");
const kmod = pkg("kmod", "modprobe and depmod", "modprobe");
const e2fsprogs = pkg("e2fsprogs", "mkfs.ext4 for the ext4 images", "mkfs.ext4");
const diod = pkg("diod", "the reference 9P server", "diod");
const ganesha = pkg("nfs-ganesha", "the second 9P server", "ganesha.nfsd");
const ganeshaVfs = pkg("nfs-ganesha-vfs", "nfs-ganesha's file backend");
const libnbdBin = pkg("libnbd-bin", "nbdinfo and nbdcopy, NBD clients", "nbdinfo");
const fio = pkg("fio", "fio's NBD engine", "fio");
const qemuUtils = pkg("qemu-utils", "qemu-img, an NBD client", "qemu-img");
const nbdClient = pkg("nbd-client", "the stock NBD client", "nbd-client");
const mmdebstrap = pkg(
  "mmdebstrap",
  "builds the Debian root that VMs boot over the network",
  "mmdebstrap",
);
const nbdServer = pkg(
  "nbd-server",
  "the stock NBD server, serving the comparator's root",
  "nbd-server",
);
const munge = pkg("munge", "munged and mungekey, for MUNGE authentication", "munged");
const libmunge = pkg("libmunge2", "libmunge, which 9nbd calls for MUNGE credentials");

/** What booting the VM takes (tools/vm.ts): the vm tier, the demo without NBD here, bench/vm.ts. */
export const VM_PACKAGES: readonly DebianPackage[] = [qemu, busybox, kmod];

/**
 * What booting a Debian root over the network takes (tools/debian_root.ts, tools/boot_vm.ts,
 * bench/boot.ts): QEMU, busybox's nc relaying the guest's connections, mmdebstrap, mke2fs, and
 * nbd-server for Debian's own NBD root.
 */
export const VM_BOOT_PACKAGES: readonly DebianPackage[] = [
  qemu,
  busybox,
  kmod,
  mmdebstrap,
  e2fsprogs,
  nbdServer,
];

/** The demo on this machine's kernel: building the image and loading the NBD driver. */
export const DEMO_PACKAGES: readonly DebianPackage[] = [e2fsprogs, kmod];

/** Each tier of `deno task test` and the Debian packages it needs. */
export const TIER_PACKAGES: Readonly<Record<string, readonly DebianPackage[]>> = {
  unit: [],
  servers: [diod, ganesha, ganeshaVfs, libnbdBin, fio, qemuUtils, munge, libmunge],
  // The vm tier also runs the demo, boots Debian roots over the network, and attaches to a
  // diod that requires MUNGE.
  vm: [...VM_PACKAGES, e2fsprogs, diod, nbdClient, mmdebstrap, nbdServer, munge, libmunge],
};

/** What {@linkcode ensurePackages} achieved. */
export type Ensured =
  | { ok: true; installed: readonly DebianPackage[] }
  | {
    ok: false;
    /** The packages still missing. */
    missing: readonly DebianPackage[];
    /** One line: what is missing and how to install it. */
    reason: string;
  };

/** How to install `packages` by hand. */
export function installCommand(packages: readonly DebianPackage[]): string {
  return `apt-get install --no-install-recommends ${packages.map((p) => p.name).join(" ")}`;
}

/** `name (why), name (why)`: what is being installed and what for. */
export function describePackages(packages: readonly DebianPackage[]): string {
  return packages.map((p) => `${p.name} (${p.why})`).join(", ");
}

/**
 * Why this process cannot install `missing` itself, or null when it can.
 *
 * @param where whether this process is root and whether apt-get and dpkg are there
 */
export function cannotInstall(
  missing: readonly DebianPackage[],
  where: { root: boolean; debian: boolean },
): string | null {
  const names = missing.map((p) => p.name).join(" ");
  if (!where.debian) {
    const commands = missing.map((p) => p.command).filter((c) => c !== undefined);
    return `missing ${commands.join(", ")}: this is not Debian (no apt-get and dpkg); ` +
      `install what Debian's ${names} provide`;
  }
  if (!where.root) {
    return `missing Debian packages ${names}; run as root to have them installed, ` +
      `or run: ${installCommand(missing)}`;
  }
  return null;
}

/**
 * Names of the packages dpkg reports installed, from the output of
 * `dpkg-query -W -f '${Package}\t${Status}\n' NAME...`.
 */
export function installedFromDpkgQuery(output: string): Set<string> {
  const installed = new Set<string>();
  for (const line of output.split("\n")) {
    const [name, status] = line.split("\t");
    // Multi-arch packages print as name:arch.
    if (status?.trim() === "install ok installed") installed.add(name.split(":")[0]);
  }
  return installed;
}

/** The packages of `packages` that are not installed here. */
export async function missingPackages(
  packages: readonly DebianPackage[],
): Promise<DebianPackage[]> {
  if (packages.length === 0) return [];
  if (isDebian()) {
    // Unknown names make dpkg-query exit 1 after printing the known ones: read the output anyway.
    const out = await runQuiet("dpkg-query", [
      "-W",
      "-f",
      "${Package}\t${Status}\n",
      ...packages.map((p) => p.name),
    ]);
    const installed = installedFromDpkgQuery(out.stdout);
    return packages.filter((p) => !installed.has(p.name));
  }
  return packages.filter((p) => p.command !== undefined && findProgram(p.command) === null);
}

/**
 * Makes sure `packages` are installed: as root on Debian, installs whatever is
 * missing with apt-get (after one `apt-get update` per process), saying what
 * and why in one line through `log`. Never throws for a missing package:
 * returns what is still missing and one line saying how to install it.
 *
 * @param who the command asking (`demo`, `test`), shown in front of the line
 * @param purpose what the packages are for, e.g. `for the servers tier`
 */
export async function ensurePackages(
  who: string,
  packages: readonly DebianPackage[],
  purpose: string,
  log: (line: string) => void = console.log,
): Promise<Ensured> {
  const missing = await missingPackages(packages);
  if (missing.length === 0) return { ok: true, installed: [] };
  const refusal = cannotInstall(missing, { root: Deno.uid() === 0, debian: isDebian() });
  if (refusal !== null) return { ok: false, missing, reason: refusal };

  log(`${who}: installing ${describePackages(missing)} with apt-get, ${purpose}`);
  const failed = (await aptUpdateOnce()) ??
    (await aptGet(["install", ...aptInstallOptions, ...missing.map((p) => p.name)]));
  const still = await missingPackages(missing);
  if (still.length === 0) return { ok: true, installed: missing };
  return {
    ok: false,
    missing: still,
    reason: `could not install ${still.map((p) => p.name).join(" ")}: ${
      failed ?? "apt-get reported success but dpkg does not list them"
    }`,
  };
}

const aptInstallOptions = [
  "-y",
  "-q",
  "--no-install-recommends",
  // Another apt (unattended upgrades) may hold the lock for a while: wait rather than fail.
  "-o",
  "DPkg::Lock::Timeout=300",
];

let aptUpdated: Promise<string | null> | undefined;

/**
 * Runs `apt-get update` once per process (later calls share the first one's
 * outcome). Package lists may be absent on a fresh machine, and apt-cache
 * knows nothing until they are fetched.
 *
 * @returns null on success, else one line saying why it failed
 */
export function aptUpdateOnce(): Promise<string | null> {
  aptUpdated ??= aptGet(["update", "-q", "-o", "DPkg::Lock::Timeout=300"]);
  return aptUpdated;
}

/** Runs apt-get non-interactively; null on success, else one line: its exit code and last error. */
async function aptGet(args: string[]): Promise<string | null> {
  const out = await runQuiet("apt-get", args, { DEBIAN_FRONTEND: "noninteractive" });
  if (out.code === 0) return null;
  const lines = (out.stderr + out.stdout).split("\n").map((l) => l.trim()).filter((l) => l);
  const last = lines.findLast((l) => /^E:/.test(l)) ?? lines.at(-1) ?? "no output";
  return `apt-get ${args[0]} failed (exit ${out.code}): ${last}`;
}

/** True when dpkg-query and apt-get are there to ask and to install with. */
function isDebian(): boolean {
  return findProgram("dpkg-query") !== null && findProgram("apt-get") !== null;
}

async function runQuiet(
  cmd: string,
  args: string[],
  env: Record<string, string> = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const out = await new Deno.Command(cmd, { args, env, stdin: "null" }).output();
    const decoder = new TextDecoder();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  } catch (err) {
    return { code: -1, stdout: "", stderr: `cannot run ${cmd}: ${(err as Error).message}` };
  }
}

/** Package programs often live in sbin, which a non-root PATH may lack. */
const sbinDirs = ["/usr/sbin", "/sbin", "/usr/local/sbin"];

/** The path of program `name` on PATH or in the sbin directories, or null. */
export function findProgram(name: string): string | null {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":").filter((d) => d !== ""), ...sbinDirs];
  for (const dir of dirs) {
    const candidate = `${dir}/${name}`;
    if (isFile(candidate)) return candidate;
  }
  return null;
}

/** True when `path` is a regular file (following symlinks). */
export function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}
