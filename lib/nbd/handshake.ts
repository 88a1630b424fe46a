/**
 * NBD fixed-newstyle handshake codec: the greeting, option requests and
 * option replies as pure functions over bytes, and {@link answerOption}, the
 * one place that decides what a server says to each option. No I/O, no
 * timers, no logging: `proxy.ts` does the reading and writing.
 *
 * Everything is big-endian (NetworkBlockDevice/nbd `doc/proto.md`,
 * "Fixed newstyle negotiation" and "Option types"):
 *
 * - server greeting, 18 bytes: `NBDMAGIC[8] IHAVEOPT[8] handshake-flags[2]`;
 * - client flags, 4 bytes;
 * - option request: `IHAVEOPT[8] option[4] length[4]`, then `length` bytes;
 * - option reply: `0x3e889045565a9[8] option[4] type[4] length[4]`, then
 *   `length` bytes;
 * - the old NBD_OPT_EXPORT_NAME answer: `size[8] transmission-flags[2]`, then
 *   124 zero bytes unless the client set NO_ZEROES.
 *
 * What this server supports: EXPORT_NAME, ABORT, LIST, INFO and GO. It never
 * negotiates structured replies (the transmission phase uses simple replies
 * only), TLS or metadata contexts: those, and every option it does not know,
 * get NBD_REP_ERR_UNSUP, after which the client may carry on.
 *
 * @module
 */

import { ProtocolError } from "../errors.ts";

/** ASCII `NBDMAGIC`: the first 8 bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** ASCII `IHAVEOPT`: second word of the greeting, and the start of every option request. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Start of every option reply. */
export const OPTION_REPLY_MAGIC = 0x3e889045565a9n;

/** Bytes of the server greeting. */
export const GREETING_BYTES = 18;
/** Bytes of the client flags that answer it. */
export const CLIENT_FLAGS_BYTES = 4;
/** Bytes of an option request header (its data follows). */
export const OPTION_HEADER_BYTES = 16;
/** Bytes of an option reply header (its data follows). */
export const OPTION_REPLY_HEADER_BYTES = 20;
/** Zero bytes after the NBD_OPT_EXPORT_NAME answer unless the client set NO_ZEROES. */
export const EXPORT_NAME_PADDING_BYTES = 124;
/**
 * Longest option data accepted. The largest sensible option is NBD_OPT_GO
 * with a 4096-byte name (the protocol's string limit) and a short list of
 * information requests; anything beyond this is a peer gone mad, and the
 * connection is dropped before a buffer of that size is allocated.
 */
export const MAX_OPTION_BYTES = 16 * 1024;
/** Longest export name (doc/proto.md: strings MUST be no longer than 4096 bytes). */
export const MAX_NAME_BYTES = 4096;

/** Handshake flags (the server's, in the greeting). */
export const HandshakeFlag = {
  fixedNewstyle: 1 << 0,
  noZeroes: 1 << 1,
} as const;

/** Client flags (the client's answer to the greeting). */
export const ClientFlag = {
  fixedNewstyle: 1 << 0,
  noZeroes: 1 << 1,
} as const;

/** The client flags this server understands; any other bit means the client wants what we lack. */
const KNOWN_CLIENT_FLAGS = ClientFlag.fixedNewstyle | ClientFlag.noZeroes;

/** Option numbers. */
export const NbdOption = {
  exportName: 1,
  abort: 2,
  list: 3,
  startTls: 5,
  info: 6,
  go: 7,
  structuredReply: 8,
  listMetaContext: 9,
  setMetaContext: 10,
} as const;

/** Option reply types; errors have bit 31 set. */
export const NbdReply = {
  ack: 1,
  server: 2,
  info: 3,
  errUnsup: 2 ** 31 + 1,
  errPolicy: 2 ** 31 + 2,
  errInvalid: 2 ** 31 + 3,
  errPlatform: 2 ** 31 + 4,
  errTlsReqd: 2 ** 31 + 5,
  errUnknown: 2 ** 31 + 6,
  errShutdown: 2 ** 31 + 7,
  errBlockSizeReqd: 2 ** 31 + 8,
  errTooBig: 2 ** 31 + 9,
} as const;

/** Information types of NBD_REP_INFO (and of NBD_OPT_INFO/GO requests). */
export const NbdInfo = {
  export: 0,
  name: 1,
  description: 2,
  blockSize: 3,
} as const;

/** Name of an option number, for logs. */
export function optionName(option: number): string {
  for (const [name, value] of Object.entries(NbdOption)) if (value === option) return name;
  return `option ${option}`;
}

/** Block size constraints advertised with NBD_INFO_BLOCK_SIZE. */
export interface BlockSizeConstraints {
  minimumBytes: number;
  preferredBytes: number;
  maximumPayloadBytes: number;
}

/** The one export a server offers, as the handshake describes it. */
export interface ExportDescription {
  /**
   * The export's name. Empty: the server has no names, and any name the
   * client asks for means this export. Non-empty: the client must ask for
   * this name or for the empty (default) name; others are unknown.
   */
  name: string;
  /** Optional text for NBD_INFO_DESCRIPTION and NBD_REP_SERVER. */
  description?: string;
  sizeBytes: number;
  /** Transmission flags (the engine's `transmissionFlags`). */
  transmissionFlags: number;
  blockSize: BlockSizeConstraints;
}

/** One decoded option request header. */
export interface OptionHeader {
  option: number;
  /** Bytes of option data that follow. */
  length: number;
}

/** One decoded option reply (what a client reads; the server only encodes them). */
export interface OptionReply {
  option: number;
  type: number;
  data: Uint8Array;
}

/** The data of an NBD_OPT_INFO or NBD_OPT_GO request. */
export interface InfoRequest {
  name: string;
  /** Information types asked for, in the client's order. */
  requests: number[];
}

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true });

function view(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** The server greeting: NBDMAGIC, IHAVEOPT, FIXED_NEWSTYLE | NO_ZEROES. */
export function encodeGreeting(): Uint8Array {
  const bytes = new Uint8Array(GREETING_BYTES);
  const v = view(bytes);
  v.setBigUint64(0, NBD_MAGIC);
  v.setBigUint64(8, IHAVEOPT);
  v.setUint16(16, HandshakeFlag.fixedNewstyle | HandshakeFlag.noZeroes);
  return bytes;
}

/**
 * Decode the client's flags. A flag we do not know asks for something we
 * cannot give, and the protocol says the server MUST then close: throws
 * {@link ProtocolError}.
 */
export function decodeClientFlags(bytes: Uint8Array): number {
  if (bytes.length < CLIENT_FLAGS_BYTES) {
    throw new ProtocolError(`NBD client flags truncated: ${bytes.length} of 4 bytes`);
  }
  const flags = view(bytes).getUint32(0);
  if ((flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
    throw new ProtocolError(`NBD client flags 0x${flags.toString(16)} include unknown bits`);
  }
  return flags;
}

/** Encode client flags (for clients and tests). */
export function encodeClientFlags(flags: number): Uint8Array {
  const bytes = new Uint8Array(CLIENT_FLAGS_BYTES);
  view(bytes).setUint32(0, flags);
  return bytes;
}

/**
 * Decode an option request header. Throws {@link ProtocolError} when it is
 * truncated, the magic is wrong (the stream is out of step) or the data
 * length exceeds `maxOptionBytes` (the data is never read, so no buffer of
 * the claimed size is ever allocated).
 */
export function decodeOptionHeader(
  bytes: Uint8Array,
  maxOptionBytes = MAX_OPTION_BYTES,
): OptionHeader {
  if (bytes.length < OPTION_HEADER_BYTES) {
    throw new ProtocolError(`NBD option header truncated: ${bytes.length} of 16 bytes`);
  }
  const v = view(bytes);
  const magic = v.getBigUint64(0);
  if (magic !== IHAVEOPT) {
    throw new ProtocolError(`bad NBD option magic 0x${magic.toString(16)} (expected IHAVEOPT)`);
  }
  const option = v.getUint32(8);
  const length = v.getUint32(12);
  if (length > maxOptionBytes) {
    throw new ProtocolError(
      `NBD ${optionName(option)} carries ${length} bytes, over the ${maxOptionBytes}-byte limit`,
    );
  }
  return { option, length };
}

/** Encode an option request (for clients and tests). */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const bytes = new Uint8Array(OPTION_HEADER_BYTES + data.length);
  const v = view(bytes);
  v.setBigUint64(0, IHAVEOPT);
  v.setUint32(8, option);
  v.setUint32(12, data.length);
  bytes.set(data, OPTION_HEADER_BYTES);
  return bytes;
}

/** Encode one option reply. */
export function encodeOptionReply(
  option: number,
  type: number,
  data: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(OPTION_REPLY_HEADER_BYTES + data.length);
  const v = view(bytes);
  v.setBigUint64(0, OPTION_REPLY_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  bytes.set(data, OPTION_REPLY_HEADER_BYTES);
  return bytes;
}

/**
 * Decode the option reply at the start of `bytes` (for clients and tests);
 * returns it and the bytes it took. Throws {@link ProtocolError} when
 * truncated or the magic is wrong.
 */
export function decodeOptionReply(bytes: Uint8Array): { reply: OptionReply; bytes: number } {
  if (bytes.length < OPTION_REPLY_HEADER_BYTES) {
    throw new ProtocolError(`NBD option reply truncated: ${bytes.length} of 20 header bytes`);
  }
  const v = view(bytes);
  const magic = v.getBigUint64(0);
  if (magic !== OPTION_REPLY_MAGIC) {
    throw new ProtocolError(`bad NBD option reply magic 0x${magic.toString(16)}`);
  }
  const length = v.getUint32(16);
  const total = OPTION_REPLY_HEADER_BYTES + length;
  if (bytes.length < total) {
    throw new ProtocolError(`NBD option reply truncated: ${bytes.length} of ${total} bytes`);
  }
  return {
    reply: {
      option: v.getUint32(8),
      type: v.getUint32(12),
      data: bytes.subarray(OPTION_REPLY_HEADER_BYTES, total),
    },
    bytes: total,
  };
}

/**
 * Decode the data of NBD_OPT_INFO / NBD_OPT_GO: `name-length[4] name
 * count[2] info-type[2] × count`. Returns undefined when it is syntactically
 * invalid (lengths that disagree with the option length, a name over 4096
 * bytes or not UTF-8): the caller answers NBD_REP_ERR_INVALID.
 */
export function decodeInfoRequest(data: Uint8Array): InfoRequest | undefined {
  if (data.length < 6) return undefined;
  const v = view(data);
  const nameBytes = v.getUint32(0);
  if (nameBytes > MAX_NAME_BYTES || nameBytes > data.length - 6) return undefined;
  const count = v.getUint16(4 + nameBytes);
  if (data.length !== 6 + nameBytes + 2 * count) return undefined;
  let name: string;
  try {
    name = strictDecoder.decode(data.subarray(4, 4 + nameBytes));
  } catch {
    return undefined;
  }
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(v.getUint16(6 + nameBytes + 2 * i));
  return { name, requests };
}

/** Encode the data of NBD_OPT_INFO / NBD_OPT_GO (for clients and tests). */
export function encodeInfoRequest(request: InfoRequest): Uint8Array {
  const name = encoder.encode(request.name);
  const bytes = new Uint8Array(6 + name.length + 2 * request.requests.length);
  const v = view(bytes);
  v.setUint32(0, name.length);
  bytes.set(name, 4);
  v.setUint16(4 + name.length, request.requests.length);
  request.requests.forEach((type, i) => v.setUint16(6 + name.length + 2 * i, type));
  return bytes;
}

/** NBD_INFO_EXPORT: `type[2] size[8] transmission-flags[2]`. */
export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Uint8Array {
  const bytes = new Uint8Array(12);
  const v = view(bytes);
  v.setUint16(0, NbdInfo.export);
  v.setBigUint64(2, BigInt(sizeBytes));
  v.setUint16(10, transmissionFlags);
  return bytes;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: `type[2] text`. */
export function encodeInfoText(type: number, text: string): Uint8Array {
  const body = encoder.encode(text);
  const bytes = new Uint8Array(2 + body.length);
  view(bytes).setUint16(0, type);
  bytes.set(body, 2);
  return bytes;
}

/** NBD_INFO_BLOCK_SIZE: `type[2] minimum[4] preferred[4] maximum-payload[4]`. */
export function encodeInfoBlockSize(constraints: BlockSizeConstraints): Uint8Array {
  const bytes = new Uint8Array(14);
  const v = view(bytes);
  v.setUint16(0, NbdInfo.blockSize);
  v.setUint32(2, constraints.minimumBytes);
  v.setUint32(6, constraints.preferredBytes);
  v.setUint32(10, constraints.maximumPayloadBytes);
  return bytes;
}

/** NBD_REP_SERVER data: `name-length[4] name description`. */
export function encodeServerEntry(name: string, description = ""): Uint8Array {
  const nameBytes = encoder.encode(name);
  const descriptionBytes = encoder.encode(description);
  const bytes = new Uint8Array(4 + nameBytes.length + descriptionBytes.length);
  view(bytes).setUint32(0, nameBytes.length);
  bytes.set(nameBytes, 4);
  bytes.set(descriptionBytes, 4 + nameBytes.length);
  return bytes;
}

/** The answer to NBD_OPT_EXPORT_NAME: `size[8] flags[2]`, then 124 zeros unless NO_ZEROES. */
export function encodeExportNameReply(
  sizeBytes: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Uint8Array {
  const bytes = new Uint8Array(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING_BYTES));
  const v = view(bytes);
  v.setBigUint64(0, BigInt(sizeBytes));
  v.setUint16(8, transmissionFlags);
  return bytes;
}

/** Does the client's `name` choose this export? */
export function exportMatches(exported: ExportDescription, name: string): boolean {
  return exported.name === "" || name === "" || name === exported.name;
}

/** What the server does after answering an option. */
export type NextStep =
  /** Read the next option. */
  | "options"
  /** Enter the transmission phase now. */
  | "transmission"
  /** Close the connection (after writing the reply, if any). */
  | "close";

/** The server's answer to one option: bytes to write, then what to do. */
export interface OptionAnswer {
  /** Bytes to write, in order (possibly none). */
  reply: Uint8Array[];
  next: NextStep;
  /** Why the connection ends or the option failed, for logs; absent when all went well. */
  note?: string;
}

/**
 * Decide the answer to one option. `clientFlags` are the client's decoded
 * flags (NO_ZEROES shapes the NBD_OPT_EXPORT_NAME answer).
 *
 * The rules, from doc/proto.md:
 * - EXPORT_NAME: the old way in; no error reply exists, so an unknown name
 *   can only be refused by closing.
 * - ABORT: ACK, then close (any data is ignored, as the protocol asks).
 * - LIST: one NBD_REP_SERVER, then ACK; data is invalid.
 * - INFO / GO: NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE (sent whether asked or
 *   not; our constraints are the protocol's defaults, so a client that did
 *   not ask loses nothing), NAME and DESCRIPTION when asked, then ACK; GO
 *   then enters transmission. An unknown name is NBD_REP_ERR_UNKNOWN and
 *   malformed data NBD_REP_ERR_INVALID; either way the client may try again.
 * - STRUCTURED_REPLY, STARTTLS, metadata contexts and unknown options:
 *   NBD_REP_ERR_UNSUP.
 */
export function answerOption(
  option: number,
  data: Uint8Array,
  exported: ExportDescription,
  clientFlags: number,
): OptionAnswer {
  const error = (type: number, message: string): OptionAnswer => ({
    reply: [encodeOptionReply(option, type, encoder.encode(message))],
    next: "options",
    note: message,
  });
  switch (option) {
    case NbdOption.exportName: {
      let name: string;
      try {
        name = strictDecoder.decode(data);
      } catch {
        return { reply: [], next: "close", note: "NBD_OPT_EXPORT_NAME with a name not in UTF-8" };
      }
      if (!exportMatches(exported, name)) {
        return {
          reply: [],
          next: "close",
          note: `NBD_OPT_EXPORT_NAME for unknown export "${name}"`,
        };
      }
      return {
        reply: [
          encodeExportNameReply(
            exported.sizeBytes,
            exported.transmissionFlags,
            (clientFlags & ClientFlag.noZeroes) !== 0,
          ),
        ],
        next: "transmission",
      };
    }
    case NbdOption.abort:
      return { reply: [encodeOptionReply(option, NbdReply.ack)], next: "close" };
    case NbdOption.list:
      if (data.length !== 0) return error(NbdReply.errInvalid, "NBD_OPT_LIST takes no data");
      return {
        reply: [
          encodeOptionReply(
            option,
            NbdReply.server,
            encodeServerEntry(exported.name, exported.description),
          ),
          encodeOptionReply(option, NbdReply.ack),
        ],
        next: "options",
      };
    case NbdOption.info:
    case NbdOption.go: {
      const request = decodeInfoRequest(data);
      if (!request) return error(NbdReply.errInvalid, `malformed ${optionName(option)} data`);
      if (!exportMatches(exported, request.name)) {
        return error(
          NbdReply.errUnknown,
          `no export named "${request.name}" (this server exports "${exported.name}")`,
        );
      }
      const infos = [
        encodeInfoExport(exported.sizeBytes, exported.transmissionFlags),
        encodeInfoBlockSize(exported.blockSize),
      ];
      if (request.requests.includes(NbdInfo.name)) {
        infos.push(encodeInfoText(NbdInfo.name, exported.name));
      }
      if (request.requests.includes(NbdInfo.description) && exported.description) {
        infos.push(encodeInfoText(NbdInfo.description, exported.description));
      }
      return {
        reply: [
          ...infos.map((info) => encodeOptionReply(option, NbdReply.info, info)),
          encodeOptionReply(option, NbdReply.ack),
        ],
        next: option === NbdOption.go ? "transmission" : "options",
      };
    }
    case NbdOption.structuredReply:
      return error(NbdReply.errUnsup, "structured replies are not supported; simple replies only");
    case NbdOption.startTls:
      return error(NbdReply.errUnsup, "TLS is not supported");
    default:
      return error(NbdReply.errUnsup, `${optionName(option)} is not supported`);
  }
}
