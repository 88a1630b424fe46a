/**
 * The few 9P2000.L pieces the export server needs that lib/p9/wire.ts does
 * not describe (yet): Treaddir/Rreaddir, and an Rread built in place so file
 * data is read straight into the reply frame. Pure functions, no I/O.
 *
 * Once wire.ts gains the rows `Treaddir 40: fid u32, offset u64, count u32`
 * and `Rreaddir 41: data data`, the readdir half of this file can go.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";
import { HEADER_BYTES, MsgType, type Qid } from "../p9/wire.ts";

/** Message numbers the codec does not have. */
export const LocalType = {
  Txattrwalk: 30,
  Treaddir: 40,
  Rreaddir: 41,
} as const;

/** Bytes before an Rread's data: size[4] type[1] tag[2] count[4]. */
export const RREAD_HEADER_BYTES = HEADER_BYTES + 4;

/** The type and tag of a frame whose size has been checked; the body is not looked at. */
export function peekHeader(frame: Uint8Array): { type: number; tag: number } {
  if (frame.length < HEADER_BYTES) throw new ProtocolError("truncated 9P frame header");
  return { type: frame[4], tag: frame[5] | (frame[6] << 8) };
}

/** A decoded Treaddir. */
export interface Treaddir {
  fid: number;
  offset: bigint;
  count: number;
}

/** Decode a whole Treaddir frame: `fid[4] offset[8] count[4]`. */
export function decodeTreaddir(frame: Uint8Array): Treaddir {
  if (frame.length !== HEADER_BYTES + 16) {
    throw new ProtocolError(`Treaddir frame of ${frame.length} bytes (expected 23)`);
  }
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  return {
    fid: view.getUint32(7, true),
    offset: view.getBigUint64(11, true),
    count: view.getUint32(19, true),
  };
}

/** One directory entry as Rreaddir carries it. */
export interface Dirent {
  qid: Qid;
  /** The cookie a client passes as Treaddir offset to continue after this entry. */
  offset: bigint;
  /** A `DT_*` value: 4 directory, 8 regular file. */
  type: number;
  name: string;
}

/** `d_type` values. */
export const DirentType = { DIR: 4, REG: 8 } as const;

const utf8 = new TextEncoder();

/**
 * Encode an Rreaddir holding as many of `entries` (from the first) as fit in
 * `maxDataBytes`; returns the frame and how many entries it holds.
 */
export function encodeRreaddir(
  tag: number,
  entries: readonly Dirent[],
  maxDataBytes: number,
): { frame: Uint8Array; taken: number } {
  const names: Uint8Array[] = [];
  let dataBytes = 0;
  for (const entry of entries) {
    const name = utf8.encode(entry.name);
    const bytes = 13 + 8 + 1 + 2 + name.length;
    if (name.length > 0xffff || dataBytes + bytes > maxDataBytes) break;
    names.push(name);
    dataBytes += bytes;
  }
  const frame = new Uint8Array(HEADER_BYTES + 4 + dataBytes);
  const view = new DataView(frame.buffer);
  view.setUint32(0, frame.length, true);
  view.setUint8(4, LocalType.Rreaddir);
  view.setUint16(5, tag, true);
  view.setUint32(7, dataBytes, true);
  let pos = 11;
  for (let i = 0; i < names.length; i++) {
    const { qid, offset, type } = entries[i];
    view.setUint8(pos, qid.type);
    view.setUint32(pos + 1, qid.version, true);
    view.setBigUint64(pos + 5, qid.path, true);
    view.setBigUint64(pos + 13, offset, true);
    view.setUint8(pos + 21, type);
    view.setUint16(pos + 22, names[i].length, true);
    frame.set(names[i], pos + 24);
    pos += 24 + names[i].length;
  }
  return { frame, taken: names.length };
}

/** Decode the data of an Rreaddir (a client's side; used by tests). */
export function decodeRreaddir(frame: Uint8Array): Dirent[] {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  if (frame.length < 11 || frame[4] !== LocalType.Rreaddir) {
    throw new ProtocolError("not an Rreaddir");
  }
  const end = 11 + view.getUint32(7, true);
  if (end !== frame.length) throw new ProtocolError("Rreaddir count does not match its frame");
  const entries: Dirent[] = [];
  let pos = 11;
  while (pos < end) {
    if (end - pos < 24) throw new ProtocolError("truncated dirent");
    const length = view.getUint16(pos + 22, true);
    if (end - pos < 24 + length) throw new ProtocolError("truncated dirent name");
    entries.push({
      qid: {
        type: view.getUint8(pos),
        version: view.getUint32(pos + 1, true),
        path: view.getBigUint64(pos + 5, true),
      },
      offset: view.getBigUint64(pos + 13, true),
      type: view.getUint8(pos + 21),
      name: new TextDecoder().decode(frame.subarray(pos + 24, pos + 24 + length)),
    });
    pos += 24 + length;
  }
  return entries;
}

/** Encode a Treaddir (a client's side; used by tests). */
export function encodeTreaddir(tag: number, msg: Treaddir): Uint8Array {
  const frame = new Uint8Array(HEADER_BYTES + 16);
  const view = new DataView(frame.buffer);
  view.setUint32(0, frame.length, true);
  view.setUint8(4, LocalType.Treaddir);
  view.setUint16(5, tag, true);
  view.setUint32(7, msg.fid, true);
  view.setBigUint64(11, msg.offset, true);
  view.setUint32(19, msg.count, true);
  return frame;
}

/**
 * An Rread frame with room for `capacity` data bytes, for reading file data
 * straight into; {@link finishRread} then trims it to what was read.
 */
export function allocRread(tag: number, capacity: number): Uint8Array {
  const frame = new Uint8Array(RREAD_HEADER_BYTES + capacity);
  frame[4] = MsgType.Rread;
  frame[5] = tag & 0xff;
  frame[6] = tag >> 8;
  return frame;
}

/** Set the size and count of an Rread from {@link allocRread} holding `count` bytes. */
export function finishRread(frame: Uint8Array, count: number): Uint8Array {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  view.setUint32(0, RREAD_HEADER_BYTES + count, true);
  view.setUint32(7, count, true);
  return frame.subarray(0, RREAD_HEADER_BYTES + count);
}
