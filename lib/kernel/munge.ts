/**
 * MUNGE credentials through libmunge over Deno FFI: mint one for this
 * process (a client proving who it is to a 9P server, as diod expects), and
 * decode one a client sent (`9nbd export --auth munge`). Everything above
 * this file talks to the {@link Munge} interface, so unit tests use a fake
 * and need no munged.
 *
 * libmunge is opened lazily, on the first credential: importing this module
 * costs nothing, and a machine without libmunge only notices when a server
 * asks for authentication. A daemon that must outlive a switch_root mints
 * its first credential (loading the library) before the switch.
 *
 * Both calls talk to munged over its Unix socket and may wait for it, so they
 * run on an FFI worker thread (`nonblocking`), each with its own context:
 * libmunge contexts are not shared between threads.
 *
 * Numbers from munge.h (MUNGE 0.5.x): `MUNGE_OPT_SOCKET` = 8; `munge_err_t`
 * values as in {@link MungeStatus}.
 *
 * @module
 */

import { AuthError } from "../errors.ts";

/** The munged socket libmunge uses unless told otherwise (munged's default). */
export const DEFAULT_MUNGE_SOCKET = "/run/munge/munge.socket.2";

/** `munge_err_t` values that 9nbd tells apart (munge.h). */
export const MungeStatus = {
  success: 0,
  noMemory: 5,
  /** Socket communication error: munged is not running, or its socket refuses us. */
  socket: 6,
  /** Invalid credential format. */
  badCredential: 8,
  /** Invalid credential: most often munged's keys differ. */
  credentialInvalid: 14,
  credentialExpired: 15,
  /** Rewound credential: its encode time lies in the future (clocks differ). */
  credentialRewound: 16,
  credentialReplayed: 17,
  credentialUnauthorized: 18,
  /** Not a libmunge status: the library itself could not be loaded. */
  noLibrary: -1,
} as const;

/** `MUNGE_OPT_SOCKET`: the socket for communication with munged (a string). */
const MUNGE_OPT_SOCKET = 8;

/** What a credential vouches for once munged has decoded it. */
export interface MungeIdentity {
  uid: number;
  gid: number;
}

/** MUNGE as 9nbd uses it, through one munged socket. */
export interface Munge {
  /** The munged socket, as given (messages name it). */
  readonly socketPath: string;
  /** A fresh credential for this process (empty payload): the ASCII `MUNGE:...:` text. */
  encode(): Promise<string>;
  /** Who `credential` vouches for; a {@link MungeError} when munged refuses it. */
  decode(credential: string): Promise<MungeIdentity>;
}

/**
 * libmunge or munged could not do what was asked, or refused a credential.
 * An {@link AuthError}: exit code 3, never retriable on its own.
 */
export class MungeError extends AuthError {
  override name = "MungeError";
  constructor(
    /** A {@link MungeStatus} value (a libmunge `munge_err_t`, or `noLibrary`). */
    readonly status: number,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * libmunge's symbols, with the C prototype beside each. `munge_ctx_set` is
 * variadic in C; it is declared with the one `const char *` argument that
 * MUNGE_OPT_SOCKET takes, which the x86-64 and aarch64 calling conventions
 * pass the same way.
 */
const libmungeSymbols = {
  // munge_ctx_t munge_ctx_create(void);
  munge_ctx_create: { parameters: [], result: "pointer" },
  // void munge_ctx_destroy(munge_ctx_t ctx);
  munge_ctx_destroy: { parameters: ["pointer" /* munge_ctx_t ctx */], result: "void" },
  // munge_err_t munge_ctx_set(munge_ctx_t ctx, int opt, ...);  (called with one const char *)
  munge_ctx_set: {
    parameters: ["pointer", /* munge_ctx_t ctx */ "i32", /* int opt */ "buffer" /* const char * */],
    result: "i32",
  },
  // const char *munge_ctx_strerror(munge_ctx_t ctx);
  munge_ctx_strerror: { parameters: ["pointer" /* munge_ctx_t ctx */], result: "pointer" },
  // const char *munge_strerror(munge_err_t e);
  munge_strerror: { parameters: ["i32" /* munge_err_t e */], result: "pointer" },
  // munge_err_t munge_encode(char **cred, munge_ctx_t ctx, const void *buf, int len);
  munge_encode: {
    parameters: [
      "buffer", /* char **cred */
      "pointer", /* munge_ctx_t ctx */
      "pointer", /* const void *buf */
      "i32", /* int len */
    ],
    result: "i32",
    nonblocking: true,
  },
  // munge_err_t munge_decode(const char *cred, munge_ctx_t ctx, void **buf, int *len,
  //                          uid_t *uid, gid_t *gid);
  munge_decode: {
    parameters: [
      "buffer", /* const char *cred */
      "pointer", /* munge_ctx_t ctx */
      "pointer", /* void **buf (NULL: the payload is not wanted) */
      "pointer", /* int *len (NULL) */
      "buffer", /* uid_t *uid */
      "buffer", /* gid_t *gid */
    ],
    result: "i32",
    nonblocking: true,
  },
  // void free(void *ptr);  (libc's, found through libmunge's dependencies: the credential is malloc'd)
  free: { parameters: ["pointer" /* void *ptr */], result: "void" },
} as const satisfies Deno.ForeignLibraryInterface;

type Libmunge = Deno.DynamicLibrary<typeof libmungeSymbols>;
let libmungeHandle: Libmunge | undefined;

/** libmunge, opened on first use; a {@link MungeError} when it is not installed. */
function libmunge(): Libmunge {
  if (libmungeHandle) return libmungeHandle;
  try {
    libmungeHandle = Deno.dlopen("libmunge.so.2", libmungeSymbols);
  } catch (cause) {
    throw new MungeError(
      MungeStatus.noLibrary,
      "libmunge is not installed (Debian package libmunge2)",
      { cause },
    );
  }
  return libmungeHandle;
}

/** The C string at `pointer`, or "" for NULL. */
function cText(pointer: Deno.PointerValue): string {
  return pointer === null ? "" : Deno.UnsafePointerView.getCString(pointer);
}

/**
 * A {@link Munge} through libmunge and the munged at `socketPath` (default
 * {@link DEFAULT_MUNGE_SOCKET}). The path is handed to libmunge as given for
 * every credential: a relative path is resolved against the working
 * directory when munged is reached, which is what a daemon that lives in
 * `/run/9nbd` after switch_root needs (`../munge/munge.socket.2`).
 */
export function libmungeClient(socketPath: string = DEFAULT_MUNGE_SOCKET): Munge {
  const socketBytes = new TextEncoder().encode(`${socketPath}\0`);

  /** Run `call` with a fresh context bound to the socket; the context is destroyed after. */
  const withContext = async <T>(
    call: (lib: Libmunge, ctx: Deno.PointerObject) => Promise<T>,
  ): Promise<T> => {
    const lib = libmunge();
    const ctx = lib.symbols.munge_ctx_create();
    if (ctx === null) throw new MungeError(MungeStatus.noMemory, "libmunge: out of memory");
    try {
      const set = lib.symbols.munge_ctx_set(ctx, MUNGE_OPT_SOCKET, socketBytes);
      if (set !== MungeStatus.success) throw failure(lib, ctx, set, "set the munged socket");
      return await call(lib, ctx);
    } finally {
      lib.symbols.munge_ctx_destroy(ctx);
    }
  };

  /** The error for `status`, with libmunge's own detail. */
  const failure = (
    lib: Libmunge,
    ctx: Deno.PointerObject,
    status: number,
    doing: string,
  ): MungeError => {
    const detail = cText(lib.symbols.munge_ctx_strerror(ctx)) ||
      cText(lib.symbols.munge_strerror(status)) || `error ${status}`;
    if (status === MungeStatus.socket) {
      return new MungeError(status, mungedUnreachable(socketPath, detail));
    }
    return new MungeError(status, `munged could not ${doing}: ${detail}`);
  };

  return {
    socketPath,
    encode: () =>
      withContext(async (lib, ctx) => {
        const credPointer = new BigUint64Array(1);
        const status = await lib.symbols.munge_encode(credPointer, ctx, null, 0);
        if (status !== MungeStatus.success) {
          throw failure(lib, ctx, status, "make a credential");
        }
        const pointer = Deno.UnsafePointer.create(credPointer[0]);
        try {
          return cText(pointer);
        } finally {
          lib.symbols.free(pointer);
        }
      }),
    decode: (credential) =>
      withContext(async (lib, ctx) => {
        const uid = new Uint32Array(1);
        const gid = new Uint32Array(1);
        const text = new TextEncoder().encode(`${credential}\0`);
        const status = await lib.symbols.munge_decode(text, ctx, null, null, uid, gid);
        if (status !== MungeStatus.success) throw failure(lib, ctx, status, "decode it");
        return { uid: uid[0], gid: gid[0] };
      }),
  };
}

/** "munged is not running (...)": whether the socket is missing or refuses us. */
export function mungedUnreachable(socketPath: string, detail: string): string {
  let exists = false;
  try {
    exists = Deno.lstatSync(socketPath).isSocket === true;
  } catch {
    // Missing, or a directory on the way is: either way there is no socket.
  }
  return exists
    ? `munged is not running (its socket ${socketPath} does not answer: ${detail})`
    : `munged is not running (no socket at ${socketPath})`;
}
