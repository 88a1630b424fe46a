/**
 * NBD transmission-phase codec: pure functions from request and reply headers
 * to bytes and back. No I/O, no timers, no logging.
 *
 * Everything on the wire is big-endian (NetworkBlockDevice/nbd `doc/proto.md`,
 * Linux `include/uapi/linux/nbd.h`):
 *
 * - request, 28 bytes: `magic[4] flags[2] type[2] cookie[8] offset[8] length[4]`,
 *   followed by `length` bytes of payload for WRITE;
 * - simple reply, 16 bytes: `magic[4] error[4] cookie[8]`, followed by
 *   `length` bytes of data for a successful READ (and nothing on error).
 *
 * The cookie is decoded as a `bigint`: `getBigUint64` / `setBigUint64` are
 * exact for every 64-bit pattern, so a cookie is echoed bit for bit.
 *
 * @module
 */

import { errnoNumber } from "../errno.ts";
import { ErrnoError, ProtocolError } from "../errors.ts";

/** Magic number that starts every request. */
export const REQUEST_MAGIC = 0x25609513;
/** Magic number that starts every simple reply. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;
/** Bytes of a request header (the WRITE payload follows it). */
export const REQUEST_BYTES = 28;
/** Bytes of a simple reply header (READ data follows it). */
export const SIMPLE_REPLY_BYTES = 16;

/** Command numbers (the `type` field of a request). */
export const NbdCommand = {
  read: 0,
  write: 1,
  /** Disconnect: the client sends nothing more and expects no reply. */
  disc: 2,
  flush: 3,
  trim: 4,
  writeZeroes: 6,
} as const;

/** Name of a command number, for logs and errors. */
export function commandName(type: number): string {
  for (const [name, value] of Object.entries(NbdCommand)) if (value === type) return name;
  return `command ${type}`;
}

/**
 * Command flags (the 16-bit `flags` field of a request). The kernel writes
 * `type | flags << 16` as one 32-bit word, which is why its header spells
 * FUA as `1 << 16`; on the wire it is bit 0 of the flags field.
 */
export const CommandFlag = {
  /** Force unit access: the write must be durable before the reply. */
  fua: 1 << 0,
  /** WRITE_ZEROES: the server must not punch a hole. */
  noHole: 1 << 1,
} as const;

/** Transmission flags: what the server supports, handed to the kernel with NBD_SET_FLAGS. */
export const TransmissionFlag = {
  /** Always set: the other flags are meaningful. */
  hasFlags: 1 << 0,
  readOnly: 1 << 1,
  sendFlush: 1 << 2,
  sendFua: 1 << 3,
  rotational: 1 << 4,
  sendTrim: 1 << 5,
  sendWriteZeroes: 1 << 6,
  /** Every connection sees every other's acknowledged writes (required for more than one socket). */
  canMultiConn: 1 << 8,
} as const;

/** One decoded request header. */
export interface NbdRequest {
  /** Command flags ({@link CommandFlag}). */
  flags: number;
  /** Command number ({@link NbdCommand}). */
  type: number;
  /** Opaque to the server; echoed exactly in the reply. */
  cookie: bigint;
  /** Byte offset on the device; 64 bits are real here. */
  offset: bigint;
  /** Bytes to read or write (the payload length for WRITE). */
  length: number;
}

/** One decoded simple-reply header. */
export interface NbdSimpleReply {
  /** 0 on success, else a Linux errno. */
  error: number;
  cookie: bigint;
}

/**
 * Decode the 28-byte request header at the start of `bytes`.
 *
 * Throws {@link ProtocolError} when `bytes` is shorter than a header (a
 * caller reading from a stream must gather {@link REQUEST_BYTES} first; a
 * decoder never guesses at a half header) or when the magic is wrong (the
 * stream is out of step and nothing after it can be trusted).
 */
export function decodeRequest(bytes: Uint8Array): NbdRequest {
  if (bytes.length < REQUEST_BYTES) {
    throw new ProtocolError(
      `NBD request truncated: ${bytes.length} of ${REQUEST_BYTES} header bytes`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, REQUEST_BYTES);
  const magic = view.getUint32(0);
  if (magic !== REQUEST_MAGIC) {
    throw new ProtocolError(
      `bad NBD request magic 0x${magic.toString(16).padStart(8, "0")} (expected 0x25609513)`,
    );
  }
  return {
    flags: view.getUint16(4),
    type: view.getUint16(6),
    cookie: view.getBigUint64(8),
    offset: view.getBigUint64(16),
    length: view.getUint32(24),
  };
}

/**
 * Encode a request header (what the kernel sends). The server never needs
 * this; it exists for clients and for tests that play the kernel.
 */
export function encodeRequest(
  request: NbdRequest,
  dest: Uint8Array = new Uint8Array(REQUEST_BYTES),
): Uint8Array {
  const view = new DataView(dest.buffer, dest.byteOffset, REQUEST_BYTES);
  view.setUint32(0, REQUEST_MAGIC);
  view.setUint16(4, request.flags);
  view.setUint16(6, request.type);
  view.setBigUint64(8, request.cookie);
  view.setBigUint64(16, request.offset);
  view.setUint32(24, request.length);
  return dest.subarray(0, REQUEST_BYTES);
}

/**
 * Encode a simple reply header into the first 16 bytes of `dest` (a fresh
 * buffer by default). A READ reply passes a buffer that already holds its
 * data after byte 16, so header and data go out in one write.
 */
export function encodeSimpleReply(
  error: number,
  cookie: bigint,
  dest: Uint8Array = new Uint8Array(SIMPLE_REPLY_BYTES),
): Uint8Array {
  const view = new DataView(dest.buffer, dest.byteOffset, SIMPLE_REPLY_BYTES);
  view.setUint32(0, SIMPLE_REPLY_MAGIC);
  view.setUint32(4, error);
  view.setBigUint64(8, cookie);
  return dest;
}

/**
 * Decode the 16-byte simple reply header at the start of `bytes` (what the
 * kernel reads). Throws {@link ProtocolError} when truncated or the magic is
 * wrong (structured replies are never negotiated with the kernel).
 */
export function decodeSimpleReply(bytes: Uint8Array): NbdSimpleReply {
  if (bytes.length < SIMPLE_REPLY_BYTES) {
    throw new ProtocolError(
      `NBD reply truncated: ${bytes.length} of ${SIMPLE_REPLY_BYTES} header bytes`,
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, SIMPLE_REPLY_BYTES);
  const magic = view.getUint32(0);
  if (magic !== SIMPLE_REPLY_MAGIC) {
    throw new ProtocolError(
      `bad NBD reply magic 0x${magic.toString(16).padStart(8, "0")} (expected 0x67446698)`,
    );
  }
  return { error: view.getUint32(4), cookie: view.getBigUint64(8) };
}

/** Linux errnos an NBD reply carries (the set `doc/proto.md` names, plus the usual aliases). */
export const NbdError = {
  ok: 0,
  EPERM: errnoNumber("EPERM"),
  EIO: errnoNumber("EIO"),
  ENOMEM: errnoNumber("ENOMEM"),
  EINVAL: errnoNumber("EINVAL"),
  ENOSPC: errnoNumber("ENOSPC"),
  EOVERFLOW: errnoNumber("EOVERFLOW"),
  ENOTSUP: errnoNumber("EOPNOTSUPP"),
  ESHUTDOWN: errnoNumber("ESHUTDOWN"),
} as const;

/**
 * How an errno reads to a block device. The NBD protocol names only a
 * handful of errnos; anything outside them would be meaningless to a client
 * (and the Linux driver turns every non-zero error into BLK_STS_IOERR anyway),
 * so it is either folded into the nearest block-layer meaning or becomes EIO.
 */
const blockErrnoFor: ReadonlyMap<string, number> = new Map([
  ["EPERM", NbdError.EPERM],
  ["EACCES", NbdError.EPERM],
  ["EROFS", NbdError.EPERM],
  ["EIO", NbdError.EIO],
  ["ENOMEM", NbdError.ENOMEM],
  ["EINVAL", NbdError.EINVAL],
  ["ENOSPC", NbdError.ENOSPC],
  ["EDQUOT", NbdError.ENOSPC],
  ["EFBIG", NbdError.ENOSPC],
  ["EOVERFLOW", NbdError.EOVERFLOW],
  ["EOPNOTSUPP", NbdError.ENOTSUP],
  ["ESHUTDOWN", NbdError.ESHUTDOWN],
]);

/**
 * The NBD error value (a Linux errno) to reply with when serving a request
 * failed with `err`. This is the one place errors cross into NBD, and it
 * reads them as `BlockBackend` promises to throw them: an errno
 * ({@link ErrnoError}, a server's Rlerror or a local refusal alike) keeps its
 * meaning when that errno means something to a block device; everything else
 * (lost connection, timeout, protocol breakage, a bug) is EIO.
 */
export function nbdErrorFor(err: unknown): number {
  if (err instanceof ErrnoError) return blockErrnoFor.get(err.code) ?? NbdError.EIO;
  return NbdError.EIO;
}
