/**
 * The Linux NBD driver's ioctl interface, reached through libc over Deno FFI.
 * This is the only file in the project that calls `Deno.dlopen`; everything
 * above it talks to the {@link KernelNbd} interface, so tests (and machines
 * without an NBD driver) can use a fake.
 *
 * libc is opened lazily, on the first call that needs it: importing this
 * module costs nothing and needs no permission.
 *
 * The sequence a daemon runs (drivers/block/nbd.c, ioctl interface):
 * `openDevice` → `configure` → `connectUnixSocket` → `setSock` → `doIt`
 * (blocks in the kernel until disconnect, so it runs on an FFI worker thread)
 * … `disconnect` → `doIt` resolves → `clearSock` → `closeFd`.
 * Every NBD ioctl needs CAP_SYS_ADMIN, and SET_SOCK must come from the task
 * (thread) that set the device up.
 *
 * @module
 */

import { ErrnoError } from "../errors.ts";
import { errnoNumber } from "../errno.ts";

/** NBD ioctl numbers: `_IO(0xab, n)` = `0xab00 + n` (include/uapi/linux/nbd.h). */
export const NbdIoctl = {
  setSock: 0xab00,
  setBlksize: 0xab01,
  setSize: 0xab02,
  doIt: 0xab03,
  clearSock: 0xab04,
  /** A no-op kept for compatibility; still checked like every NBD ioctl. */
  clearQue: 0xab05,
  printDebug: 0xab06,
  setSizeBlocks: 0xab07,
  disconnect: 0xab08,
  setTimeout: 0xab09,
  setFlags: 0xab0a,
} as const;

/** The uapi name of an NBD ioctl number, for messages. */
export function nbdIoctlName(request: number): string {
  for (const [name, value] of Object.entries(NbdIoctl)) {
    if (value === request) return `NBD_${name.replace(/[A-Z]/g, (c) => `_${c}`).toUpperCase()}`;
  }
  return `ioctl 0x${request.toString(16)}`;
}

/** How the device is set up before it is started. */
export interface NbdDeviceConfig {
  /** Device size in bytes; a multiple of `blockSize` (see `deviceSizeBytes` in lib/nbd/engine.ts). */
  sizeBytes: number;
  /** Logical block size: a power of two from 512 to the page size. */
  blockSize: number;
  /** Transmission flags (`transmissionFlags` in lib/nbd/engine.ts). */
  flags: number;
  /**
   * Per-request timeout in the kernel, in seconds. Default 0: the daemon owns
   * timeouts and failover, so the kernel should wait. (Recent kernels then
   * never fail a request, logging "Possible stuck request" every 30 s; old
   * ones treat 0 as 30 s.)
   */
  timeoutSeconds?: number;
}

/** The kernel NBD operations the daemon needs; fds are plain numbers. */
export interface KernelNbd {
  /** Open `/dev/nbdN` read-write; returns the fd. */
  openDevice(path: string): number;
  /** NBD_SET_BLKSIZE, NBD_SET_SIZE, NBD_SET_FLAGS, NBD_SET_TIMEOUT, in that order. */
  configure(fd: number, config: NbdDeviceConfig): void;
  /** A connected AF_UNIX stream socket to `path`, as a raw fd to hand to {@link setSock}. */
  connectUnixSocket(path: string): number;
  /** NBD_SET_SOCK: the kernel's end of the NBD connection. */
  setSock(fd: number, sockFd: number): void;
  /**
   * NBD_DO_IT: run the device until it is disconnected; resolves with 0 then.
   * Blocks in the kernel, so it runs off the JavaScript thread.
   */
  doIt(fd: number): Promise<number>;
  /**
   * NBD_DISCONNECT: the kernel sends DISC and {@link doIt} returns. Off the
   * JavaScript thread too: the kernel's send may wait for this very process
   * to read its socket.
   */
  disconnect(fd: number): Promise<void>;
  /** NBD_CLEAR_SOCK: drop the kernel's socket and fail its queue. */
  clearSock(fd: number): void;
  closeFd(fd: number): void;
}

const O_RDWR = 0o2;
const O_CLOEXEC = 0o2000000;
const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_CLOEXEC = 0o2000000;
/** `struct sockaddr_un`: `sa_family_t sun_family` (2 bytes) then `char sun_path[108]`. */
const SOCKADDR_UN_BYTES = 110;
const SUN_PATH_BYTES = 108;

/**
 * libc symbols, with the C prototype beside each. `open` and `ioctl` are
 * variadic in C; they are declared with the one extra argument used here,
 * which the x86-64 and aarch64 calling conventions pass the same way.
 */
const libcSymbols = {
  // int open(const char *pathname, int flags, ...);
  open: { parameters: ["buffer", /* const char *pathname */ "i32" /* int flags */], result: "i32" },
  // int close(int fd);
  close: { parameters: ["i32" /* int fd */], result: "i32" },
  // int ioctl(int fd, unsigned long request, ...);  (called with one unsigned long argument)
  ioctl: {
    parameters: [
      "i32", /* int fd */
      "u64", /* unsigned long request */
      "u64", /* unsigned long arg */
    ],
    result: "i32",
  },
  // The same ioctl, run on a worker thread: for NBD_DO_IT, which blocks until disconnect.
  ioctlNonblocking: {
    name: "ioctl",
    parameters: [
      "i32", /* int fd */
      "u64", /* unsigned long request */
      "u64", /* unsigned long arg */
    ],
    result: "i32",
    nonblocking: true,
  },
  // int socket(int domain, int type, int protocol);
  socket: {
    parameters: ["i32", /* int domain */ "i32", /* int type */ "i32" /* int protocol */],
    result: "i32",
  },
  // int connect(int sockfd, const struct sockaddr *addr, socklen_t addrlen);
  connect: {
    parameters: [
      "i32", /* int sockfd */
      "buffer", /* const struct sockaddr *addr */
      "u32", /* socklen_t addrlen */
    ],
    result: "i32",
  },
  // int *__errno_location(void);  (the calling thread's errno)
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libc = Deno.DynamicLibrary<typeof libcSymbols>;
let libcHandle: Libc | undefined;

/** libc, opened on first use. */
function libc(): Libc {
  return libcHandle ??= Deno.dlopen("libc.so.6", libcSymbols);
}

/**
 * The calling thread's errno. Read it immediately after the failing call:
 * nothing in between may make another call that could set it.
 */
function lastErrno(lib: Libc): number {
  const pointer = lib.symbols.__errno_location();
  if (pointer === null) return errnoNumber("EIO");
  return new Deno.UnsafePointerView(pointer).getInt32(0);
}

const NEEDS_ROOT = "needs root (CAP_SYS_ADMIN)";
const DEVICE_BUSY = "device in use (already attached or mounted)";
const NO_NBD_DRIVER =
  "no such device: try `modprobe nbd`; if that fails, this kernel has no NBD driver";

/** What to tell the user about `errno` from an NBD ioctl. */
function ioctlHint(errno: number): string {
  switch (errno) {
    case errnoNumber("EPERM"):
    case errnoNumber("EACCES"):
      return NEEDS_ROOT;
    case errnoNumber("EBUSY"):
      return DEVICE_BUSY;
    case errnoNumber("ENOTTY"):
      return "not an NBD device";
    default:
      return "";
  }
}

function openHint(errno: number): string {
  switch (errno) {
    case errnoNumber("ENOENT"):
    case errnoNumber("ENXIO"):
    case errnoNumber("ENODEV"):
      return NO_NBD_DRIVER;
    case errnoNumber("EPERM"):
    case errnoNumber("EACCES"):
      return NEEDS_ROOT;
    case errnoNumber("EBUSY"):
      return DEVICE_BUSY;
    default:
      return "";
  }
}

/** A NUL-terminated C string. */
function cString(text: string): Uint8Array<ArrayBuffer> {
  const bytes = new TextEncoder().encode(text);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** Options of {@link LinuxKernelNbd}. */
export interface LinuxKernelNbdOptions {
  /** Where the kernel's block devices appear in sysfs (default `/sys/block`). */
  sysfsRoot?: string;
}

/**
 * {@link KernelNbd} on the real Linux driver, through libc.
 *
 * How `doIt` learns errno: NBD_DO_IT runs on a Deno FFI worker thread
 * (`nonblocking: true`), and errno is thread-local, so the JavaScript thread
 * cannot read it (its own `__errno_location` is another variable, and a second
 * nonblocking call may land on another pool thread). When DO_IT returns -1 a
 * synchronous follow-up check finds the cause: NBD_CLEAR_QUE, a no-op that
 * the kernel checks exactly as it checks DO_IT (CAP_SYS_ADMIN, an NBD device,
 * not netlink-owned), is issued on the same fd and its errno is used if it
 * fails; otherwise a `pid` file in sysfs means another task runs the device
 * (EBUSY); otherwise the cause is not observable and EIO is reported with a
 * pointer to the kernel log. DO_IT's other failures (no socket set, a kernel
 * request timeout) are visible there. `disconnect` is diagnosed the same way.
 */
export class LinuxKernelNbd implements KernelNbd {
  readonly #sysfsRoot: string;
  /** Device path of each fd from {@link openDevice}, for messages and the sysfs check. */
  readonly #paths = new Map<number, string>();

  constructor(options: LinuxKernelNbdOptions = {}) {
    this.#sysfsRoot = options.sysfsRoot ?? "/sys/block";
  }

  openDevice(path: string): number {
    const lib = libc();
    const fd = lib.symbols.open(cString(path), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      const errno = lastErrno(lib);
      throw new ErrnoError(errno, `open ${path}`, openHint(errno));
    }
    this.#paths.set(fd, path);
    return fd;
  }

  configure(fd: number, config: NbdDeviceConfig): void {
    const { sizeBytes, blockSize, flags } = config;
    const timeoutSeconds = config.timeoutSeconds ?? 0;
    if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0 || sizeBytes % blockSize !== 0) {
      throw new RangeError(`device size ${sizeBytes} is not a multiple of block size ${blockSize}`);
    }
    // Block size first: the kernel sizes the disk with the block size in force.
    this.#ioctl(fd, NbdIoctl.setBlksize, blockSize);
    this.#ioctl(fd, NbdIoctl.setSize, sizeBytes);
    this.#ioctl(fd, NbdIoctl.setFlags, flags);
    this.#ioctl(fd, NbdIoctl.setTimeout, timeoutSeconds);
  }

  connectUnixSocket(path: string): number {
    const pathBytes = new TextEncoder().encode(path);
    if (pathBytes.length >= SUN_PATH_BYTES) {
      throw new ErrnoError(
        errnoNumber("ENAMETOOLONG"),
        `connect ${path}`,
        `a Unix socket path must be shorter than ${SUN_PATH_BYTES} bytes`,
      );
    }
    const lib = libc();
    const sock = lib.symbols.socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) throw new ErrnoError(lastErrno(lib), "socket AF_UNIX");
    const address = new Uint8Array(SOCKADDR_UN_BYTES);
    // sun_family is in host byte order; every host Deno runs Linux on is little-endian.
    new DataView(address.buffer).setUint16(0, AF_UNIX, true);
    address.set(pathBytes, 2); // the rest is zeros: sun_path ends with a NUL
    const length = 2 + pathBytes.length + 1;
    if (lib.symbols.connect(sock, address, length) < 0) {
      const errno = lastErrno(lib);
      lib.symbols.close(sock);
      throw new ErrnoError(errno, `connect ${path}`, "is the daemon's socket listening?");
    }
    return sock;
  }

  setSock(fd: number, sockFd: number): void {
    this.#ioctl(fd, NbdIoctl.setSock, sockFd);
  }

  async doIt(fd: number): Promise<number> {
    const lib = libc();
    const result = await lib.symbols.ioctlNonblocking(fd, BigInt(NbdIoctl.doIt), 0n);
    if (result >= 0) return result;
    throw await this.#diagnoseNonblocking(fd, NbdIoctl.doIt);
  }

  async disconnect(fd: number): Promise<void> {
    const lib = libc();
    const result = await lib.symbols.ioctlNonblocking(fd, BigInt(NbdIoctl.disconnect), 0n);
    if (result < 0) throw await this.#diagnoseNonblocking(fd, NbdIoctl.disconnect);
  }

  clearSock(fd: number): void {
    this.#ioctl(fd, NbdIoctl.clearSock, 0);
  }

  closeFd(fd: number): void {
    const lib = libc();
    const path = this.#paths.get(fd);
    this.#paths.delete(fd);
    if (lib.symbols.close(fd) < 0) {
      throw new ErrnoError(lastErrno(lib), `close ${path ?? `fd ${fd}`}`);
    }
  }

  #describe(fd: number): string {
    return this.#paths.get(fd) ?? `fd ${fd}`;
  }

  #ioctl(fd: number, request: number, arg: number): void {
    const lib = libc();
    if (lib.symbols.ioctl(fd, BigInt(request), BigInt(arg)) < 0) {
      const errno = lastErrno(lib);
      throw new ErrnoError(
        errno,
        `ioctl ${nbdIoctlName(request)} ${this.#describe(fd)}`,
        ioctlHint(errno),
      );
    }
  }

  /** The error for a nonblocking NBD ioctl that returned -1 (see the class comment). */
  async #diagnoseNonblocking(fd: number, request: number): Promise<ErrnoError> {
    const operation = `ioctl ${nbdIoctlName(request)} ${this.#describe(fd)}`;
    const lib = libc();
    if (lib.symbols.ioctl(fd, BigInt(NbdIoctl.clearQue), 0n) < 0) {
      const errno = lastErrno(lib);
      return new ErrnoError(errno, operation, ioctlHint(errno));
    }
    const path = this.#paths.get(fd);
    if (path !== undefined && request === NbdIoctl.doIt) {
      const name = path.slice(path.lastIndexOf("/") + 1);
      const state = await readNbdDeviceState(name, this.#sysfsRoot).catch(() => undefined);
      if (state?.pid !== undefined) {
        return new ErrnoError(errnoNumber("EBUSY"), operation, DEVICE_BUSY);
      }
    }
    return new ErrnoError(
      errnoNumber("EIO"),
      operation,
      "the kernel refused it; its log (`dmesg`) names the cause " +
        "(errno is not observable from Deno's FFI worker thread)",
    );
  }
}

/** The shared real implementation. */
export const linuxKernelNbd: KernelNbd = new LinuxKernelNbd();

/** What sysfs says about one NBD device. */
export interface NbdDeviceState {
  /** `nbd0`, ... */
  name: string;
  index: number;
  /** The task serving it (NBD_DO_IT is running), or undefined when none is. */
  pid?: number;
  /** Current size; 0 when unconfigured. */
  sizeBytes: number;
}

/** Read `ROOT/NAME/pid` and `ROOT/NAME/size` (size is in 512-byte sectors). */
export async function readNbdDeviceState(
  name: string,
  sysfsRoot = "/sys/block",
): Promise<NbdDeviceState> {
  const match = /^nbd(\d+)$/.exec(name);
  if (!match) throw new RangeError(`${name} is not an NBD device name`);
  const dir = `${sysfsRoot}/${name}`;
  let pid: number | undefined;
  try {
    pid = Number.parseInt((await Deno.readTextFile(`${dir}/pid`)).trim(), 10);
  } catch (err) {
    // The driver creates the pid attribute only while a task runs the device.
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const sectors = Number.parseInt((await Deno.readTextFile(`${dir}/size`)).trim(), 10);
  return { name, index: Number(match[1]), pid, sizeBytes: sectors * 512 };
}

/** Every NBD device sysfs knows, by index. An absent sysfs root means none. */
export async function listNbdDevices(sysfsRoot = "/sys/block"): Promise<NbdDeviceState[]> {
  const names: string[] = [];
  try {
    for await (const entry of Deno.readDir(sysfsRoot)) {
      if (/^nbd\d+$/.test(entry.name)) names.push(entry.name);
    }
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
  const states = await Promise.all(names.map((name) => readNbdDeviceState(name, sysfsRoot)));
  return states.sort((a, b) => a.index - b.index);
}

/** Options of {@link findFreeDevice}. */
export interface FindFreeDeviceOptions {
  /** Default `/sys/block`. */
  sysfsRoot?: string;
  /** Where device nodes live, default `/dev`. */
  devDir?: string;
}

/**
 * The lowest-numbered free NBD device as `{ path, ...state }`, or undefined
 * when there is none (or no NBD driver). Free means no task runs it (no `pid`
 * file) and it has size 0: a device with a size but no pid is being set up by
 * another process between NBD_SET_SIZE and NBD_DO_IT, and taking it would
 * make both fail. (Nothing stops two processes racing for the same free
 * device; the loser gets EBUSY from the kernel.)
 */
export async function findFreeDevice(
  options: FindFreeDeviceOptions = {},
): Promise<(NbdDeviceState & { path: string }) | undefined> {
  const devDir = options.devDir ?? "/dev";
  for (const state of await listNbdDevices(options.sysfsRoot)) {
    if (state.pid === undefined && state.sizeBytes === 0) {
      return { ...state, path: `${devDir}/${state.name}` };
    }
  }
  return undefined;
}
