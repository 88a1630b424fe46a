/**
 * 9P2000.L wire codec: pure functions from messages to bytes and back.
 * No I/O, no timers, no logging.
 *
 * A frame is `size[4] type[1] tag[2] body`, little-endian. Each message is
 * described once, as a list of typed fields in {@link layouts}; encoding and
 * decoding both walk that list, so a new message is one table row. A decoder
 * never returns a half-filled message: a frame that is truncated, too long
 * for its fields, carries an unknown type or an ill-formed string raises
 * {@link ProtocolError}.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";

/**
 * Message type numbers (T = request, R = reply = T + 1), as Linux
 * include/net/9p/9p.h numbers them. Types without a row in {@link layouts}
 * are named for logs and for a server to refuse, but not decoded.
 */
export const MsgType = {
  Tlerror: 6,
  Rlerror: 7,
  /**
   * 9P2000's Rerror number. nfs-ganesha answers some 9P2000.L requests with
   * it, carrying an Rlerror body (ecode[4]); Linux's client reads it the
   * same way for .L sessions, and so do we.
   */
  Rerror: 107,
  Tstatfs: 8,
  Rstatfs: 9,
  Tlopen: 12,
  Rlopen: 13,
  Tlcreate: 14,
  Tsymlink: 16,
  Tmknod: 18,
  Trename: 20,
  Tgetattr: 24,
  Rgetattr: 25,
  Tsetattr: 26,
  Txattrwalk: 30,
  Txattrcreate: 32,
  Treaddir: 40,
  Rreaddir: 41,
  Tfsync: 50,
  Rfsync: 51,
  Tlink: 70,
  Tmkdir: 72,
  Trenameat: 74,
  Tunlinkat: 76,
  Tversion: 100,
  Rversion: 101,
  Tauth: 102,
  Rauth: 103,
  Tattach: 104,
  Rattach: 105,
  Tflush: 108,
  Rflush: 109,
  Twalk: 110,
  Rwalk: 111,
  Tread: 116,
  Rread: 117,
  Twrite: 118,
  Rwrite: 119,
  Tclunk: 120,
  Rclunk: 121,
  Tremove: 122,
} as const;

/** Name of a message type number, for logs and errors. */
export function msgTypeName(type: number): string {
  for (const [name, value] of Object.entries(MsgType)) if (value === type) return name;
  return `type ${type}`;
}

/** Tag reserved for Tversion. */
export const NOTAG = 0xffff;
/** "No fid", used as afid when no authentication is done. */
export const NOFID = 0xffffffff;
/** "No uid" for n_uname when the uname is authoritative. */
export const NONUNAME = 0xffffffff;
/** Bytes of a frame's header: size[4] type[1] tag[2]. */
export const HEADER_BYTES = 7;
/**
 * Bytes of Tread/Twrite/Rread overhead that an msize must leave room for
 * (Linux's P9_IOHDRSZ): an Rread carries at most `msize - IOHDRSZ` bytes.
 */
export const IOHDRSZ = 24;
/** Most names one Twalk may carry. */
export const MAXWELEM = 16;
/** The protocol version this client speaks. */
export const VERSION_9P2000L = "9P2000.L";

/** Tgetattr request_mask bits (a subset). */
export const GetattrMask = {
  MODE: 0x1n,
  NLINK: 0x2n,
  UID: 0x4n,
  GID: 0x8n,
  RDEV: 0x10n,
  ATIME: 0x20n,
  MTIME: 0x40n,
  CTIME: 0x80n,
  INO: 0x100n,
  SIZE: 0x200n,
  BLOCKS: 0x400n,
  BASIC: 0x7ffn,
  ALL: 0x3fffn,
} as const;

/** Linux open(2) flags used with Tlopen. */
export const OpenFlags = { RDONLY: 0, WRONLY: 1, RDWR: 2 } as const;

/** A server's unique identity of a file. */
export interface Qid {
  type: number;
  version: number;
  path: bigint;
}

/** Qid type bits. */
export const QidType = { DIR: 0x80, AUTH: 0x08, FILE: 0 } as const;

/** Bytes of a qid: type[1] version[4] path[8]. */
const QID_BYTES = 13;

/** Write `qid` at `at`: the one place the qid layout is written. */
function putQid(view: DataView, at: number, qid: Qid): void {
  view.setUint8(at, qid.type);
  view.setUint32(at + 1, qid.version, true);
  view.setBigUint64(at + 5, qid.path, true);
}

/** Read the qid at `at` (the caller has checked the bytes are there). */
function getQid(view: DataView, at: number): Qid {
  return {
    type: view.getUint8(at),
    version: view.getUint32(at + 1, true),
    path: view.getBigUint64(at + 5, true),
  };
}

/** Every field kind a 9P2000.L message is made of. */
type FieldKind = "u8" | "u16" | "u32" | "u64" | "str" | "qid" | "strs" | "qids" | "data";

/** The TypeScript type a field kind decodes to. */
type FieldValue<K extends FieldKind> = K extends "u8" | "u16" | "u32" ? number
  : K extends "u64" ? bigint
  : K extends "str" ? string
  : K extends "qid" ? Qid
  : K extends "strs" ? string[]
  : K extends "qids" ? Qid[]
  : Uint8Array;

type Layout = readonly (readonly [string, FieldKind])[];

/**
 * The body of each message, field by field (diod protocol.md, Linux
 * include/net/9p/9p.h). The order of rows is the order on the wire.
 */
export const layouts = {
  [MsgType.Rlerror]: [["ecode", "u32"]],
  [MsgType.Rerror]: [["ecode", "u32"]],
  [MsgType.Tstatfs]: [["fid", "u32"]],
  [MsgType.Rstatfs]: [
    ["fsType", "u32"],
    ["bsize", "u32"],
    ["blocks", "u64"],
    ["bfree", "u64"],
    ["bavail", "u64"],
    ["files", "u64"],
    ["ffree", "u64"],
    ["fsid", "u64"],
    ["namelen", "u32"],
  ],
  [MsgType.Tlopen]: [["fid", "u32"], ["flags", "u32"]],
  [MsgType.Rlopen]: [["qid", "qid"], ["iounit", "u32"]],
  [MsgType.Tgetattr]: [["fid", "u32"], ["requestMask", "u64"]],
  [MsgType.Rgetattr]: [
    ["valid", "u64"],
    ["qid", "qid"],
    ["mode", "u32"],
    ["uid", "u32"],
    ["gid", "u32"],
    ["nlink", "u64"],
    ["rdev", "u64"],
    ["size", "u64"],
    ["blksize", "u64"],
    ["blocks", "u64"],
    ["atimeSec", "u64"],
    ["atimeNsec", "u64"],
    ["mtimeSec", "u64"],
    ["mtimeNsec", "u64"],
    ["ctimeSec", "u64"],
    ["ctimeNsec", "u64"],
    ["btimeSec", "u64"],
    ["btimeNsec", "u64"],
    ["gen", "u64"],
    ["dataVersion", "u64"],
  ],
  [MsgType.Treaddir]: [["fid", "u32"], ["offset", "u64"], ["count", "u32"]],
  /** `data` is a list of directory entries: see {@link encodeDirents}. */
  [MsgType.Rreaddir]: [["data", "data"]],
  [MsgType.Tfsync]: [["fid", "u32"], ["datasync", "u32"]],
  [MsgType.Rfsync]: [],
  [MsgType.Tversion]: [["msize", "u32"], ["version", "str"]],
  [MsgType.Rversion]: [["msize", "u32"], ["version", "str"]],
  [MsgType.Tauth]: [["afid", "u32"], ["uname", "str"], ["aname", "str"], ["nUname", "u32"]],
  [MsgType.Rauth]: [["aqid", "qid"]],
  [MsgType.Tattach]: [
    ["fid", "u32"],
    ["afid", "u32"],
    ["uname", "str"],
    ["aname", "str"],
    ["nUname", "u32"],
  ],
  [MsgType.Rattach]: [["qid", "qid"]],
  [MsgType.Tflush]: [["oldtag", "u16"]],
  [MsgType.Rflush]: [],
  [MsgType.Twalk]: [["fid", "u32"], ["newfid", "u32"], ["names", "strs"]],
  [MsgType.Rwalk]: [["qids", "qids"]],
  [MsgType.Tread]: [["fid", "u32"], ["offset", "u64"], ["count", "u32"]],
  [MsgType.Rread]: [["data", "data"]],
  [MsgType.Twrite]: [["fid", "u32"], ["offset", "u64"], ["data", "data"]],
  [MsgType.Rwrite]: [["count", "u32"]],
  [MsgType.Tclunk]: [["fid", "u32"]],
  [MsgType.Rclunk]: [],
} as const satisfies Record<number, Layout>;

type Layouts = typeof layouts;
type FieldsOf<L> = L extends
  readonly (readonly [infer N extends string, infer K extends FieldKind])[]
  ? { [E in L[number] as E[0] & N]: FieldValue<E[1] & K> }
  : never;

/** A 9P message of type `T`: its type number and its fields. */
export type Message<T extends keyof Layouts = keyof Layouts> = T extends keyof Layouts
  ? { type: T } & FieldsOf<Layouts[T]>
  : never;

/** A decoded frame. */
export interface Frame {
  tag: number;
  msg: Message;
}

const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** The UTF-8 bytes of a 9P string, refusing what its 16-bit length cannot count. */
function stringBytes(value: string): Uint8Array {
  const bytes = utf8Encoder.encode(value);
  if (bytes.length > 0xffff) throw new RangeError("9P string longer than 65535 bytes");
  return bytes;
}

/** Write a 9P string (`length[2]` then the bytes) at `at`; returns the bytes written. */
function putString(frame: Uint8Array, view: DataView, at: number, bytes: Uint8Array): number {
  view.setUint16(at, bytes.length, true);
  frame.set(bytes, at + 2);
  return 2 + bytes.length;
}

function layoutOf(type: number): Layout {
  const layout = (layouts as Record<number, Layout | undefined>)[type];
  if (!layout) throw new ProtocolError(`unknown 9P message type ${type}`);
  return layout;
}

/** Bytes a field will take on the wire (strings must already be encoded). */
function fieldBytes(kind: FieldKind, value: unknown, strings: Uint8Array[]): number {
  switch (kind) {
    case "u8":
      return 1;
    case "u16":
      return 2;
    case "u32":
      return 4;
    case "u64":
      return 8;
    case "qid":
      return QID_BYTES;
    case "str": {
      const bytes = stringBytes(value as string);
      strings.push(bytes);
      return 2 + bytes.length;
    }
    case "strs": {
      const names = value as string[];
      if (names.length > MAXWELEM) throw new RangeError(`more than ${MAXWELEM} walk names`);
      let total = 2;
      for (const name of names) total += fieldBytes("str", name, strings);
      return total;
    }
    case "qids": {
      const qids = value as Qid[];
      if (qids.length > MAXWELEM) throw new RangeError(`more than ${MAXWELEM} qids`);
      return 2 + QID_BYTES * qids.length;
    }
    case "data":
      return 4 + (value as Uint8Array).length;
  }
}

/**
 * Bytes of an Rread before its data: size[4] type[1] tag[2] count[4]. An
 * Rreaddir's header is the same.
 */
export const RREAD_HEADER_BYTES = HEADER_BYTES + 4;
/** Bytes of an Rwrite: size[4] type[1] tag[2] count[4]. */
export const RWRITE_BYTES = HEADER_BYTES + 4;
/** Bytes of a Tread: size[4] type[1] tag[2] fid[4] offset[8] count[4]. */
export const TREAD_BYTES = 23;

/** Bytes of a Twrite before its data: size[4] type[1] tag[2] fid[4] offset[8] count[4]. */
export const TWRITE_HEADER_BYTES = 23;

/**
 * The first {@link TWRITE_HEADER_BYTES} of a Twrite of `count` data bytes:
 * followed by the data, byte for byte what {@link encode} makes of
 * `{ type: Twrite, fid, offset, data }`. Sent as two pieces, the data needs
 * no copy into a frame of its own.
 */
export function encodeTwriteHeader(
  tag: number,
  fid: number,
  offset: number,
  count: number,
): Uint8Array {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`Twrite offset ${offset} is not a byte offset`);
  }
  const header = new Uint8Array(TWRITE_HEADER_BYTES);
  const view = new DataView(header.buffer);
  view.setUint32(0, TWRITE_HEADER_BYTES + count, true);
  header[4] = MsgType.Twrite;
  view.setUint16(5, tag, true);
  view.setUint32(7, fid, true);
  view.setUint32(11, offset % 0x1_0000_0000, true);
  view.setUint32(15, Math.floor(offset / 0x1_0000_0000), true);
  view.setUint32(19, count, true);
  return header;
}

/**
 * A Tread frame, byte for byte what {@link encode} makes of
 * `{ type: Tread, fid, offset, count }`, without the message object and
 * BigInt the general encoder needs (reads are the hot path).
 */
export function encodeTread(tag: number, fid: number, offset: number, count: number): Uint8Array {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`Tread offset ${offset} is not a byte offset`);
  }
  const frame = new Uint8Array(TREAD_BYTES);
  const view = new DataView(frame.buffer);
  view.setUint32(0, TREAD_BYTES, true);
  frame[4] = MsgType.Tread;
  view.setUint16(5, tag, true);
  view.setUint32(7, fid, true);
  view.setUint32(11, offset % 0x1_0000_0000, true);
  view.setUint32(15, Math.floor(offset / 0x1_0000_0000), true);
  view.setUint32(19, count, true);
  return frame;
}

/**
 * An Rread frame with room for `capacity` data bytes after
 * {@link RREAD_HEADER_BYTES}, for a server to read file data straight into;
 * {@link finishRread} then trims it to what was read.
 */
export function allocRread(tag: number, capacity: number): Uint8Array {
  const frame = new Uint8Array(RREAD_HEADER_BYTES + capacity);
  frame[4] = MsgType.Rread;
  frame[5] = tag & 0xff;
  frame[6] = tag >> 8;
  return frame;
}

/**
 * The Rread from {@link allocRread} holding its first `count` data bytes:
 * byte for byte what {@link encode} makes of `{ type: Rread, data }`.
 */
export function finishRread(frame: Uint8Array, count: number): Uint8Array {
  if (count > frame.length - RREAD_HEADER_BYTES) {
    throw new RangeError(`Rread of ${count} bytes in a frame with room for fewer`);
  }
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  view.setUint32(0, RREAD_HEADER_BYTES + count, true);
  view.setUint32(7, count, true);
  return frame.subarray(0, RREAD_HEADER_BYTES + count);
}

/** Encode one message with its tag into a complete frame. */
export function encode(tag: number, msg: Message): Uint8Array {
  const layout = layoutOf(msg.type);
  const fields = msg as unknown as Record<string, unknown>;
  const strings: Uint8Array[] = [];
  let size = HEADER_BYTES;
  for (const [name, kind] of layout) size += fieldBytes(kind, fields[name], strings);
  const frame = new Uint8Array(size);
  const view = new DataView(frame.buffer);
  view.setUint32(0, size, true);
  view.setUint8(4, msg.type);
  view.setUint16(5, tag, true);
  let pos = HEADER_BYTES;
  let nextString = 0;
  for (const [name, kind] of layout) {
    const value = fields[name];
    switch (kind) {
      case "u8":
        view.setUint8(pos, value as number);
        pos += 1;
        break;
      case "u16":
        view.setUint16(pos, value as number, true);
        pos += 2;
        break;
      case "u32":
        view.setUint32(pos, value as number, true);
        pos += 4;
        break;
      case "u64":
        view.setBigUint64(pos, value as bigint, true);
        pos += 8;
        break;
      case "str":
        pos += putString(frame, view, pos, strings[nextString++]);
        break;
      case "qid":
        putQid(view, pos, value as Qid);
        pos += QID_BYTES;
        break;
      case "strs":
        view.setUint16(pos, (value as string[]).length, true);
        pos += 2;
        for (let i = 0; i < (value as string[]).length; i++) {
          pos += putString(frame, view, pos, strings[nextString++]);
        }
        break;
      case "qids":
        view.setUint16(pos, (value as Qid[]).length, true);
        pos += 2;
        for (const qid of value as Qid[]) {
          putQid(view, pos, qid);
          pos += QID_BYTES;
        }
        break;
      case "data": {
        const data = value as Uint8Array;
        view.setUint32(pos, data.length, true);
        frame.set(data, pos + 4);
        pos += 4 + data.length;
        break;
      }
    }
  }
  return frame;
}

/**
 * A bounds-checked cursor over one frame's bytes. Every read checks that the
 * bytes are there first, so a short frame raises ProtocolError instead of
 * reading past its end.
 */
class Reader {
  #pos: number;
  readonly #view: DataView;
  constructor(readonly bytes: Uint8Array, start: number) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#pos = start;
  }
  get remaining(): number {
    return this.bytes.length - this.#pos;
  }
  #need(n: number, what: string): number {
    if (this.remaining < n) {
      throw new ProtocolError(
        `truncated 9P frame: ${what} needs ${n} bytes, ${this.remaining} left`,
      );
    }
    const at = this.#pos;
    this.#pos += n;
    return at;
  }
  u8(what: string): number {
    return this.#view.getUint8(this.#need(1, what));
  }
  u16(what: string): number {
    return this.#view.getUint16(this.#need(2, what), true);
  }
  u32(what: string): number {
    return this.#view.getUint32(this.#need(4, what), true);
  }
  u64(what: string): bigint {
    return this.#view.getBigUint64(this.#need(8, what), true);
  }
  str(what: string): string {
    const length = this.u16(what);
    const at = this.#need(length, what);
    try {
      return utf8Decoder.decode(this.bytes.subarray(at, at + length));
    } catch (cause) {
      throw new ProtocolError(`ill-formed UTF-8 in 9P string ${what}`, { cause });
    }
  }
  qid(what: string): Qid {
    return getQid(this.#view, this.#need(QID_BYTES, what));
  }
  /** A view (not a copy) of `count[4]` bytes: valid as long as the frame's buffer is. */
  data(what: string): Uint8Array {
    const length = this.u32(what);
    const at = this.#need(length, what);
    return this.bytes.subarray(at, at + length);
  }
}

/**
 * Read the size field of a frame header and check it before anything is
 * allocated: at least a header, at most `maxBytes`.
 */
export function frameSize(header: Uint8Array, maxBytes: number): number {
  if (header.length < 4) throw new ProtocolError("truncated 9P frame header");
  const size = new DataView(header.buffer, header.byteOffset, 4).getUint32(0, true);
  if (size < HEADER_BYTES) {
    throw new ProtocolError(`9P frame size ${size} is below the header size`);
  }
  if (size > maxBytes) throw new ProtocolError(`9P frame size ${size} exceeds msize ${maxBytes}`);
  return size;
}

/** The type and tag of a frame whose size has been checked; the body is not looked at. */
export function peekHeader(frame: Uint8Array): { type: number; tag: number } {
  if (frame.length < HEADER_BYTES) throw new ProtocolError("truncated 9P frame header");
  return { type: frame[4], tag: frameTag(frame) };
}

/** The tag of a frame known to hold a whole header. */
export function frameTag(frame: Uint8Array): number {
  return frame[5] | (frame[6] << 8);
}

/** The little-endian u32 at `at` of bytes known to hold it, read without a DataView. */
function u32At(bytes: Uint8Array, at: number): number {
  return (bytes[at] | bytes[at + 1] << 8 | bytes[at + 2] << 16 | bytes[at + 3] << 24) >>> 0;
}

/**
 * Decode one complete frame. `frame` must be exactly the frame (its size
 * field must equal its length). Byte fields (Rread/Twrite data) are views
 * into `frame`, not copies.
 */
export function decode(frame: Uint8Array): Frame {
  const size = frameSize(frame, 0xffffffff);
  if (size !== frame.length) {
    throw new ProtocolError(`9P frame size field ${size} does not match its ${frame.length} bytes`);
  }
  const type = frame[4];
  const tag = frameTag(frame);
  const layout = layoutOf(type);
  const reader = new Reader(frame, HEADER_BYTES);
  const msg: Record<string, unknown> = { type };
  for (const [name, kind] of layout) {
    switch (kind) {
      case "u8":
        msg[name] = reader.u8(name);
        break;
      case "u16":
        msg[name] = reader.u16(name);
        break;
      case "u32":
        msg[name] = reader.u32(name);
        break;
      case "u64":
        msg[name] = reader.u64(name);
        break;
      case "str":
        msg[name] = reader.str(name);
        break;
      case "qid":
        msg[name] = reader.qid(name);
        break;
      case "strs":
      case "qids": {
        const count = reader.u16(name);
        if (count > MAXWELEM) {
          throw new ProtocolError(`9P ${name} count ${count} exceeds ${MAXWELEM}`);
        }
        const items: unknown[] = [];
        for (let i = 0; i < count; i++) {
          items.push(kind === "strs" ? reader.str(name) : reader.qid(name));
        }
        msg[name] = items;
        break;
      }
      case "data":
        msg[name] = reader.data(name);
        break;
    }
  }
  if (reader.remaining !== 0) {
    throw new ProtocolError(
      `9P ${msgTypeName(type)} frame has ${reader.remaining} bytes after its last field`,
    );
  }
  return { tag, msg: msg as unknown as Message };
}

/**
 * The data length of `frame` if it is a well-formed Rread (what {@link decode}
 * gives as `data.length`), or undefined for anything else, which
 * {@link decode} then explains. The data is `frame.subarray(RREAD_HEADER_BYTES)`
 * and the tag {@link frameTag}: reads are the hot path, and this makes no
 * message object.
 */
export function rreadDataBytes(frame: Uint8Array): number | undefined {
  if (frame.length < RREAD_HEADER_BYTES || frame[4] !== MsgType.Rread) return undefined;
  if (u32At(frame, 0) !== frame.length) return undefined;
  const count = u32At(frame, 7);
  return RREAD_HEADER_BYTES + count === frame.length ? count : undefined;
}

/**
 * The count of `frame` if it is a well-formed Rwrite (what {@link decode}
 * gives as `count`), or undefined for anything else; the tag is
 * {@link frameTag}. Like {@link rreadDataBytes}, without a message object.
 */
export function rwriteCount(frame: Uint8Array): number | undefined {
  if (frame.length !== RWRITE_BYTES || frame[4] !== MsgType.Rwrite) return undefined;
  return u32At(frame, 0) === RWRITE_BYTES ? u32At(frame, 7) : undefined;
}

/** One directory entry as an Rreaddir's data carries it. */
export interface Dirent {
  qid: Qid;
  /** The cookie a client passes as Treaddir offset to continue after this entry. */
  offset: bigint;
  /** A `d_type` value ({@link DirentType}). */
  type: number;
  name: string;
}

/** `d_type` values. */
export const DirentType = { DIR: 4, REG: 8 } as const;

/** Bytes of a dirent before its name's bytes: qid[13] offset[8] type[1] name length[2]. */
const DIRENT_HEADER_BYTES = QID_BYTES + 8 + 1 + 2;

/**
 * The data of an Rreaddir holding as many of `entries` as fit in
 * `maxBytes`, from the first on; `taken` says how many that is (0 when even
 * the first does not fit).
 */
export function encodeDirents(
  entries: readonly Dirent[],
  maxBytes: number,
): { data: Uint8Array; taken: number } {
  const names: Uint8Array[] = [];
  let size = 0;
  for (const entry of entries) {
    const name = stringBytes(entry.name);
    if (size + DIRENT_HEADER_BYTES + name.length > maxBytes) break;
    names.push(name);
    size += DIRENT_HEADER_BYTES + name.length;
  }
  const data = new Uint8Array(size);
  const view = new DataView(data.buffer);
  let pos = 0;
  for (const [i, name] of names.entries()) {
    const { qid, offset, type } = entries[i];
    putQid(view, pos, qid);
    pos += QID_BYTES;
    view.setBigUint64(pos, offset, true);
    view.setUint8(pos + 8, type);
    pos += 9;
    pos += putString(data, view, pos, name);
  }
  return { data, taken: names.length };
}

/**
 * The entries of an Rreaddir's data (a client's side). An entry cut short
 * or a name of ill-formed UTF-8 raises {@link ProtocolError}.
 */
export function decodeDirents(data: Uint8Array): Dirent[] {
  const reader = new Reader(data, 0);
  const entries: Dirent[] = [];
  while (reader.remaining > 0) {
    entries.push({
      qid: reader.qid("dirent qid"),
      offset: reader.u64("dirent offset"),
      type: reader.u8("dirent type"),
      name: reader.str("dirent name"),
    });
  }
  return entries;
}
