/**
 * The 9P2000.L codec against golden bytes written out by hand from the
 * protocol description (diod protocol.md, Linux include/net/9p/9p.h), never
 * produced by `encode`: round trips, every truncation, trailing bytes,
 * wrong size fields, unknown types, oversized walks, bad UTF-8, random
 * frames, and (when captured) frames from a real diod exchange.
 */

import assert from "node:assert/strict";
import { ProtocolError } from "../../lib/errors.ts";
import {
  allocRread,
  decode,
  decodeDirents,
  type Dirent,
  DirentType,
  encode,
  encodeDirents,
  encodeTread,
  encodeTwriteHeader,
  finishRread,
  frameSize,
  frameTag,
  HEADER_BYTES,
  layouts,
  MAXWELEM,
  type Message,
  MsgType,
  msgTypeName,
  NOFID,
  NOTAG,
  peekHeader,
  QidType,
  RREAD_HEADER_BYTES,
  rreadDataBytes,
  rwriteCount,
} from "../../lib/p9/wire.ts";

/** Bytes from hex, spaces ignored; each argument is one field (or a group of fields). */
function hex(...fields: string[]): Uint8Array {
  const digits = fields.join("").replaceAll(" ", "");
  assert.equal(digits.length % 2, 0, `odd number of hex digits in ${digits}`);
  const bytes = new Uint8Array(digits.length / 2);
  for (let i = 0; i < bytes.length; i++) {
    const byte = digits.slice(2 * i, 2 * i + 2);
    assert.match(byte, /^[0-9a-f]{2}$/i, `bad hex ${byte}`);
    bytes[i] = parseInt(byte, 16);
  }
  return bytes;
}

function toHex(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

interface Golden {
  name: string;
  tag: number;
  msg: Message;
  bytes: Uint8Array;
}

/** Two directory entries, each qid[13] offset[8] type[1] name[s]: 27 and 29 bytes. */
const direntBytes = [
  "80 00000000 0300000000000000",
  "0100000000000000",
  "04",
  "0300 737562", // "sub"
  "00 02000000 0400000000000000",
  "0200000000000000",
  "08",
  "0500 612e696d67", // "a.img"
];
const dirents: Dirent[] = [
  {
    qid: { type: QidType.DIR, version: 0, path: 3n },
    offset: 1n,
    type: DirentType.DIR,
    name: "sub",
  },
  {
    qid: { type: QidType.FILE, version: 2, path: 4n },
    offset: 2n,
    type: DirentType.REG,
    name: "a.img",
  },
];

// Each frame: size[4] type[1] tag[2], then the body, all little-endian.
const goldens: Golden[] = [
  {
    name: "Rlerror ENOENT",
    tag: 1,
    msg: { type: MsgType.Rlerror, ecode: 2 },
    bytes: hex("0b000000", "07", "0100", "02000000"),
  },
  {
    name: "Rerror (9P2000 number, 9P2000.L body) EACCES",
    tag: 1,
    msg: { type: MsgType.Rerror, ecode: 13 },
    bytes: hex("0b000000", "6b", "0100", "0d000000"),
  },
  {
    name: "Tstatfs",
    tag: 2,
    msg: { type: MsgType.Tstatfs, fid: 1 },
    bytes: hex("0b000000", "08", "0200", "01000000"),
  },
  {
    name: "Rstatfs",
    tag: 2,
    msg: {
      type: MsgType.Rstatfs,
      fsType: 0x01021994,
      bsize: 4096,
      blocks: 0x100n,
      bfree: 0x80n,
      bavail: 0x7fn,
      files: 1000n,
      ffree: 999n,
      fsid: 0x1122334455667788n,
      namelen: 255,
    },
    bytes: hex(
      "43000000",
      "09",
      "0200",
      "94190201", // type
      "00100000", // bsize
      "0001000000000000", // blocks
      "8000000000000000", // bfree
      "7f00000000000000", // bavail
      "e803000000000000", // files
      "e703000000000000", // ffree
      "8877665544332211", // fsid
      "ff000000", // namelen
    ),
  },
  {
    name: "Tlopen O_RDWR",
    tag: 3,
    msg: { type: MsgType.Tlopen, fid: 5, flags: 2 },
    bytes: hex("0f000000", "0c", "0300", "05000000", "02000000"),
  },
  {
    name: "Rlopen",
    tag: 3,
    msg: { type: MsgType.Rlopen, qid: { type: 0, version: 1, path: 42n }, iounit: 0x2000 },
    bytes: hex("18000000", "0d", "0300", "00 01000000 2a00000000000000", "00200000"),
  },
  {
    name: "Tgetattr BASIC",
    tag: 4,
    msg: { type: MsgType.Tgetattr, fid: 5, requestMask: 0x7ffn },
    bytes: hex("13000000", "18", "0400", "05000000", "ff07000000000000"),
  },
  {
    name: "Rgetattr",
    tag: 4,
    msg: {
      type: MsgType.Rgetattr,
      valid: 0x7ffn,
      qid: { type: 0, version: 3, path: 0x0102030405060708n },
      mode: 0o100644,
      uid: 1000,
      gid: 100,
      nlink: 1n,
      rdev: 0n,
      size: 0x40000000n,
      blksize: 4096n,
      blocks: 0x200000n,
      atimeSec: 0x65000000n,
      atimeNsec: 1n,
      mtimeSec: 0x65000001n,
      mtimeNsec: 2n,
      ctimeSec: 0x65000002n,
      ctimeNsec: 3n,
      btimeSec: 0n,
      btimeNsec: 0n,
      gen: 5n,
      dataVersion: 6n,
    },
    bytes: hex(
      "a0000000",
      "19",
      "0400",
      "ff07000000000000", // valid
      "00 03000000 0807060504030201", // qid
      "a4810000", // mode 0100644
      "e8030000", // uid
      "64000000", // gid
      "0100000000000000", // nlink
      "0000000000000000", // rdev
      "0000004000000000", // size
      "0010000000000000", // blksize
      "0000200000000000", // blocks
      "0000006500000000", // atime_sec
      "0100000000000000", // atime_nsec
      "0100006500000000", // mtime_sec
      "0200000000000000", // mtime_nsec
      "0200006500000000", // ctime_sec
      "0300000000000000", // ctime_nsec
      "0000000000000000", // btime_sec
      "0000000000000000", // btime_nsec
      "0500000000000000", // gen
      "0600000000000000", // data_version
    ),
  },
  {
    name: "Treaddir",
    tag: 14,
    msg: { type: MsgType.Treaddir, fid: 1, offset: 2n, count: 60 },
    bytes: hex("17000000", "28", "0e00", "01000000", "0200000000000000", "3c000000"),
  },
  {
    name: "Rreaddir of two entries",
    tag: 14,
    msg: { type: MsgType.Rreaddir, data: hex(...direntBytes) },
    bytes: hex("43000000", "29", "0e00", "38000000", ...direntBytes),
  },
  {
    name: "Rreaddir at the end of a directory",
    tag: 15,
    msg: { type: MsgType.Rreaddir, data: new Uint8Array() },
    bytes: hex("0b000000", "29", "0f00", "00000000"),
  },
  {
    name: "Tfsync datasync",
    tag: 5,
    msg: { type: MsgType.Tfsync, fid: 5, datasync: 1 },
    bytes: hex("0f000000", "32", "0500", "05000000", "01000000"),
  },
  {
    name: "Rfsync",
    tag: 5,
    msg: { type: MsgType.Rfsync },
    bytes: hex("07000000", "33", "0500"),
  },
  {
    name: "Tversion",
    tag: NOTAG,
    msg: { type: MsgType.Tversion, msize: 8216, version: "9P2000.L" },
    bytes: hex("15000000", "64", "ffff", "18200000", "0800 3950323030302e4c"),
  },
  {
    name: "Rversion",
    tag: NOTAG,
    msg: { type: MsgType.Rversion, msize: 8192, version: "9P2000.L" },
    bytes: hex("15000000", "65", "ffff", "00200000", "0800 3950323030302e4c"),
  },
  {
    name: "Tauth",
    tag: 6,
    msg: { type: MsgType.Tauth, afid: 3, uname: "root", aname: "/srv/img", nUname: 0 },
    bytes: hex(
      "1f000000",
      "66",
      "0600",
      "03000000",
      "0400 726f6f74",
      "0800 2f7372762f696d67",
      "00000000",
    ),
  },
  {
    name: "Rauth",
    tag: 6,
    msg: { type: MsgType.Rauth, aqid: { type: 0x08, version: 0, path: 1n } },
    bytes: hex("14000000", "67", "0600", "08 00000000 0100000000000000"),
  },
  {
    name: "Tattach without auth",
    tag: 7,
    msg: {
      type: MsgType.Tattach,
      fid: 1,
      afid: NOFID,
      uname: "root",
      aname: "/srv/img",
      nUname: 1000,
    },
    bytes: hex(
      "23000000",
      "68",
      "0700",
      "01000000",
      "ffffffff",
      "0400 726f6f74",
      "0800 2f7372762f696d67",
      "e8030000",
    ),
  },
  {
    name: "Rattach",
    tag: 7,
    msg: { type: MsgType.Rattach, qid: { type: 0x80, version: 0, path: 2n } },
    bytes: hex("14000000", "69", "0700", "80 00000000 0200000000000000"),
  },
  {
    name: "Tflush",
    tag: 8,
    msg: { type: MsgType.Tflush, oldtag: 7 },
    bytes: hex("09000000", "6c", "0800", "0700"),
  },
  {
    name: "Rflush",
    tag: 8,
    msg: { type: MsgType.Rflush },
    bytes: hex("07000000", "6d", "0800"),
  },
  {
    name: "Twalk of two names",
    tag: 9,
    msg: { type: MsgType.Twalk, fid: 1, newfid: 2, names: ["dir", "img"] },
    bytes: hex(
      "1b000000",
      "6e",
      "0900",
      "01000000",
      "02000000",
      "0200",
      "0300 646972",
      "0300 696d67",
    ),
  },
  {
    name: "Twalk of no names (a clone)",
    tag: 10,
    msg: { type: MsgType.Twalk, fid: 1, newfid: 3, names: [] },
    bytes: hex("11000000", "6e", "0a00", "01000000", "03000000", "0000"),
  },
  {
    name: "Twalk of a non-ASCII name",
    tag: 11,
    msg: { type: MsgType.Twalk, fid: 1, newfid: 4, names: ["é"] },
    bytes: hex("15000000", "6e", "0b00", "01000000", "04000000", "0100", "0200 c3a9"),
  },
  {
    name: "Rwalk",
    tag: 9,
    msg: {
      type: MsgType.Rwalk,
      qids: [{ type: 0x80, version: 0, path: 3n }, { type: 0, version: 0, path: 4n }],
    },
    bytes: hex(
      "23000000",
      "6f",
      "0900",
      "0200",
      "80 00000000 0300000000000000",
      "00 00000000 0400000000000000",
    ),
  },
  {
    name: "Tread above 4 GiB",
    tag: 10,
    msg: { type: MsgType.Tread, fid: 2, offset: 0x100000000n, count: 4096 },
    bytes: hex("17000000", "74", "0a00", "02000000", "0000000001000000", "00100000"),
  },
  {
    name: "Rread",
    tag: 10,
    msg: { type: MsgType.Rread, data: new Uint8Array([0xde, 0xad, 0xbe, 0xef]) },
    bytes: hex("0f000000", "75", "0a00", "04000000 deadbeef"),
  },
  {
    name: "Rread at end of file",
    tag: 13,
    msg: { type: MsgType.Rread, data: new Uint8Array() },
    bytes: hex("0b000000", "75", "0d00", "00000000"),
  },
  {
    name: "Twrite",
    tag: 11,
    msg: { type: MsgType.Twrite, fid: 2, offset: 512n, data: new Uint8Array([1, 2, 3]) },
    bytes: hex("1a000000", "76", "0b00", "02000000", "0002000000000000", "03000000 010203"),
  },
  {
    name: "Rwrite",
    tag: 11,
    msg: { type: MsgType.Rwrite, count: 3 },
    bytes: hex("0b000000", "77", "0b00", "03000000"),
  },
  {
    name: "Tclunk",
    tag: 12,
    msg: { type: MsgType.Tclunk, fid: 2 },
    bytes: hex("0b000000", "78", "0c00", "02000000"),
  },
  {
    name: "Rclunk",
    tag: 12,
    msg: { type: MsgType.Rclunk },
    bytes: hex("07000000", "79", "0c00"),
  },
];

/** A copy of `bytes` whose size field is rewritten to its actual length. */
function withSizeField(bytes: Uint8Array): Uint8Array {
  const copy = bytes.slice();
  if (copy.length >= 4) new DataView(copy.buffer).setUint32(0, copy.length, true);
  return copy;
}

Deno.test("every message type in the layout table has a golden frame", () => {
  const covered = new Set(goldens.map((g) => g.msg.type));
  const missing = Object.keys(layouts).map(Number).filter((type) => !covered.has(type as never));
  assert.deepEqual(missing.map(msgTypeName), []);
});

Deno.test("each golden frame's size field equals its length", () => {
  for (const golden of goldens) {
    const size = new DataView(golden.bytes.buffer).getUint32(0, true);
    assert.equal(size, golden.bytes.length, golden.name);
  }
});

for (const golden of goldens) {
  Deno.test(`${golden.name} encodes to its golden bytes`, () => {
    assert.equal(toHex(encode(golden.tag, golden.msg)), toHex(golden.bytes));
  });

  Deno.test(`${golden.name} decodes from its golden bytes`, () => {
    const frame = decode(golden.bytes);
    assert.equal(frame.tag, golden.tag);
    assert.deepStrictEqual(frame.msg, golden.msg);
  });

  Deno.test(`${golden.name} survives an encode/decode round trip`, () => {
    const again = decode(encode(golden.tag, golden.msg));
    assert.equal(again.tag, golden.tag);
    assert.deepStrictEqual(again.msg, golden.msg);
    assert.equal(toHex(encode(again.tag, again.msg)), toHex(golden.bytes));
  });

  Deno.test(`every truncated prefix of ${golden.name} is a protocol error`, () => {
    for (let length = 0; length < golden.bytes.length; length++) {
      const prefix = golden.bytes.slice(0, length);
      assert.throws(() => decode(prefix), ProtocolError, `${length}-byte prefix`);
      // The same prefix with an honest size field: the body itself is short.
      assert.throws(() => decode(withSizeField(prefix)), ProtocolError, `${length}-byte body`);
    }
  });

  Deno.test(`${golden.name} with a trailing byte is a protocol error`, () => {
    const longer = new Uint8Array(golden.bytes.length + 1);
    longer.set(golden.bytes);
    assert.throws(() => decode(longer), ProtocolError, "size field one short");
    assert.throws(() => decode(withSizeField(longer)), ProtocolError, "size field counts it");
  });
}

Deno.test("decode reads a frame that is a view into a larger buffer", () => {
  const golden = goldens.find((g) => g.name === "Twrite")!;
  const buffer = new Uint8Array(golden.bytes.length + 10).fill(0xaa);
  buffer.set(golden.bytes, 5);
  const frame = decode(buffer.subarray(5, 5 + golden.bytes.length));
  assert.deepStrictEqual(frame.msg, golden.msg);
});

Deno.test("a size field that disagrees with the frame's length is a protocol error", () => {
  const frame = hex("0b000000", "78", "0c00", "02000000");
  for (const size of [0, 6, 7, 10, 12, 0xffffffff]) {
    const bad = frame.slice();
    new DataView(bad.buffer).setUint32(0, size, true);
    assert.throws(() => decode(bad), ProtocolError, `size ${size}`);
  }
});

Deno.test("frameSize rejects headers shorter than the size field", () => {
  for (let length = 0; length < 4; length++) {
    assert.throws(() => frameSize(new Uint8Array(length), 8192), ProtocolError, `${length} bytes`);
  }
});

Deno.test("frameSize rejects sizes below a header and above msize, and accepts the rest", () => {
  const header = (size: number) => {
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(0, size, true);
    return bytes;
  };
  for (const size of [0, 1, HEADER_BYTES - 1]) {
    assert.throws(() => frameSize(header(size), 8192), ProtocolError, `size ${size}`);
  }
  assert.throws(() => frameSize(header(8193), 8192), ProtocolError);
  assert.throws(() => frameSize(header(0xffffffff), 8192), ProtocolError);
  assert.equal(frameSize(header(HEADER_BYTES), 8192), HEADER_BYTES);
  assert.equal(frameSize(header(8192), 8192), 8192);
});

Deno.test("a frame of an unknown message type is a protocol error", () => {
  for (const type of [0, 6, 106, 150, 255]) {
    const frame = hex("0b000000", type.toString(16).padStart(2, "0"), "0100", "00000000");
    assert.throws(() => decode(frame), ProtocolError, `type ${type}`);
  }
  assert.throws(
    () => encode(1, { type: 106 } as unknown as Message),
    ProtocolError,
    "encode refuses it too",
  );
});

Deno.test("a Twalk of 17 names is refused by encode and by decode", () => {
  const names = Array.from({ length: MAXWELEM + 1 }, (_, i) => String.fromCharCode(97 + i));
  assert.throws(() => encode(1, { type: MsgType.Twalk, fid: 1, newfid: 2, names }), RangeError);
  const frame = withSizeField(
    hex(
      "00000000",
      "6e",
      "0100",
      "01000000",
      "02000000",
      "1100",
      ...names.map((n) => "0100" + n.charCodeAt(0).toString(16)),
    ),
  );
  assert.throws(() => decode(frame), ProtocolError);
  // Sixteen is fine.
  const sixteen = withSizeField(
    hex(
      "00000000",
      "6e",
      "0100",
      "01000000",
      "02000000",
      "1000",
      ...names.slice(0, 16).map((n) => "0100" + n.charCodeAt(0).toString(16)),
    ),
  );
  assert.deepEqual(
    (decode(sixteen).msg as Message<typeof MsgType.Twalk>).names,
    names.slice(0, 16),
  );
});

Deno.test("an Rwalk of 17 qids is refused by decode", () => {
  const qid = "00 00000000 0000000000000000";
  const frame = withSizeField(hex("00000000", "6f", "0100", "1100", ...Array(17).fill(qid)));
  assert.throws(() => decode(frame), ProtocolError);
});

Deno.test("a string of ill-formed UTF-8 is a protocol error", () => {
  for (
    const bad of [
      "01 ff", // never valid
      "02 c0 80", // overlong NUL
      "03 eda080", // a UTF-16 surrogate
      "01 c3", // a sequence cut short
    ]
  ) {
    const [length, body] = bad.split(" ");
    const frame = withSizeField(hex("00000000", "65", "ffff", "00200000", length + "00", body));
    assert.throws(() => decode(frame), ProtocolError, bad);
  }
});

Deno.test("a string length that runs past the frame is a protocol error", () => {
  const frame = withSizeField(
    hex("00000000", "65", "ffff", "00200000", "0900", "3950323030302e4c"),
  );
  assert.throws(() => decode(frame), ProtocolError);
});

Deno.test("an Rread count that runs past the frame is a protocol error", () => {
  const frame = withSizeField(hex("00000000", "75", "0100", "05000000", "deadbeef"));
  assert.throws(() => decode(frame), ProtocolError);
});

/** mulberry32: a small seeded PRNG, so a failure can be replayed. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) >>> 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

Deno.test("random frames decode to a message or fail with a protocol error, nothing else", () => {
  const random = prng(0x9e3779b9);
  const knownTypes = Object.keys(layouts).map(Number);
  let decoded = 0;
  let refused = 0;
  for (let i = 0; i < 5000; i++) {
    // Often exactly a real message's length (so fixed layouts decode), sometimes anything.
    const roll = random();
    const length = roll < 0.05
      ? Math.floor(random() * 7)
      : roll < 0.6
      ? goldens[Math.floor(random() * goldens.length)].bytes.length
      : 7 + Math.floor(random() * 80);
    const frame = new Uint8Array(length);
    for (let j = 0; j < length; j++) frame[j] = Math.floor(random() * 256);
    if (length >= 4) new DataView(frame.buffer).setUint32(0, length, true);
    if (length >= 5 && random() < 0.9) {
      frame[4] = knownTypes[Math.floor(random() * knownTypes.length)];
    }
    // Small counts make walks and strings plausible.
    if (length >= 9 && random() < 0.5) frame[8] = 0;
    try {
      const { msg } = decode(frame);
      assert.ok(msg.type in layouts);
      decoded++;
    } catch (err) {
      if (!(err instanceof ProtocolError)) {
        throw new Error(`frame ${toHex(frame)} threw ${err}`, { cause: err });
      }
      refused++;
    }
  }
  assert.ok(decoded > 100, `only ${decoded} random frames decoded`);
  assert.ok(refused > 100, `only ${refused} random frames refused`);
});

Deno.test("golden frames with one random byte changed never throw anything but ProtocolError", () => {
  const random = prng(12345);
  for (let i = 0; i < 3000; i++) {
    const golden = goldens[i % goldens.length];
    const frame = golden.bytes.slice();
    const at = 4 + Math.floor(random() * (frame.length - 4));
    frame[at] = Math.floor(random() * 256);
    try {
      decode(frame);
    } catch (err) {
      assert.ok(err instanceof ProtocolError, `${golden.name} byte ${at}: ${err}`);
    }
  }
});

// Frames captured from a real diod exchange by another part of the suite.
const fixtureUrl = new URL("../fixtures/diod_exchange.json", import.meta.url);

interface CapturedFrame {
  dir: "T" | "R";
  type: number | string;
  hex: string;
  source?: string;
}

function loadCapturedFrames(): CapturedFrame[] | undefined {
  let text: string;
  try {
    text = Deno.readTextFileSync(fixtureUrl);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
  const parsed = JSON.parse(text) as CapturedFrame[] | { frames: CapturedFrame[] };
  return Array.isArray(parsed) ? parsed : parsed.frames;
}

const captured = loadCapturedFrames();
const inCI = Deno.env.get("CI") === "true";
if (captured === undefined && !inCI) {
  console.log("SKIPPED: diod golden frames: fixture not captured");
}

Deno.test({
  name: "every frame captured from diod decodes and re-encodes to identical bytes",
  ignore: captured === undefined && !inCI,
  fn() {
    assert.ok(captured, `fixture ${fixtureUrl.pathname} not captured (required when CI=true)`);
    assert.ok(captured.length > 0, "the diod fixture holds no frames");
    const seen = new Set<number>();
    for (const [i, frame] of captured.entries()) {
      const bytes = hex(frame.hex);
      const where = `frame ${i} (${frame.dir} ${frame.type}${
        frame.source ? `, ${frame.source}` : ""
      })`;
      const { tag, msg } = decode(bytes);
      if (typeof frame.type === "number") assert.equal(msg.type, frame.type, where);
      else assert.equal(msgTypeName(msg.type), frame.type, where);
      assert.equal(msg.type % 2 === 0 ? "T" : "R", frame.dir, `${where}: direction`);
      assert.equal(toHex(encode(tag, msg)), toHex(bytes), where);
      seen.add(msg.type);
    }
    assert.ok(seen.has(MsgType.Tversion) && seen.has(MsgType.Rversion), "no version exchange");
  },
});

Deno.test("encodeTread makes the same bytes as the general encoder, offsets past 4 GiB included", () => {
  const offsets = [
    0,
    1,
    4095,
    2 ** 32 - 1,
    2 ** 32,
    2 ** 32 + 12345,
    2 ** 40 + 7,
    Number.MAX_SAFE_INTEGER,
  ];
  for (const offset of offsets) {
    for (const [tag, fid, count] of [[0, 1, 4096], [0xfffe, 0xfffffffe, 1 << 20], [77, 3, 0]]) {
      assert.deepEqual(
        encodeTread(tag, fid, offset, count),
        encode(tag, { type: MsgType.Tread, fid, offset: BigInt(offset), count }),
        `tag ${tag} fid ${fid} offset ${offset} count ${count}`,
      );
    }
  }
  assert.deepEqual(
    encodeTread(0x0102, 0x03040506, 0x0708090a0b, 0x0c0d0e0f),
    hex("17000000", "74", "0201", "06050403", "0b0a090807000000", "0f0e0d0c"),
  );
});

Deno.test("encodeTread refuses an offset that is not a safe byte offset", () => {
  for (const offset of [-1, 0.5, 2 ** 53, Number.NaN]) {
    assert.throws(() => encodeTread(1, 1, offset, 1), RangeError, String(offset));
  }
});

Deno.test("encodeTwriteHeader followed by the data is the general encoder's Twrite", () => {
  for (const offset of [0, 4095, 2 ** 32 + 3, Number.MAX_SAFE_INTEGER]) {
    for (const length of [0, 1, 4096, 65000]) {
      const data = new Uint8Array(length).map((_, i) => (i * 13 + length) & 0xff);
      const header = encodeTwriteHeader(0x1234, 7, offset, data.length);
      const joined = new Uint8Array(header.length + data.length);
      joined.set(header);
      joined.set(data, header.length);
      assert.deepEqual(
        joined,
        encode(0x1234, { type: MsgType.Twrite, fid: 7, offset: BigInt(offset), data }),
        `offset ${offset} length ${length}`,
      );
    }
  }
  assert.throws(() => encodeTwriteHeader(1, 1, -1, 1), RangeError);
});

Deno.test("allocRread filled and trimmed by finishRread is the general encoder's Rread", () => {
  for (const tag of [0, 1, 0x1234, 0xfffe, NOTAG]) {
    for (const length of [0, 1, 4096, 65000]) {
      for (const spare of [0, 1, 300]) {
        const data = new Uint8Array(length).map((_, i) => (i * 7 + tag) & 0xff);
        const frame = allocRread(tag, length + spare);
        frame.set(data, RREAD_HEADER_BYTES);
        // Room past the data holds whatever a short file read left there.
        frame.fill(0xee, RREAD_HEADER_BYTES + length);
        assert.deepEqual(
          finishRread(frame, length),
          encode(tag, { type: MsgType.Rread, data }),
          `tag ${tag} length ${length} spare ${spare}`,
        );
      }
    }
  }
  assert.deepEqual(
    finishRread(allocRread(0x0a0b, 8).fill(0xde, RREAD_HEADER_BYTES), 2),
    hex("0d000000", "75", "0b0a", "02000000 dede"),
  );
});

Deno.test("finishRread refuses more data than its frame has room for", () => {
  assert.throws(() => finishRread(allocRread(1, 10), 11), RangeError);
});

/** What {@link decode} says `frame` is, in the terms of the fast decoders. */
function decodedAs(
  frame: Uint8Array,
): { tag: number; rread?: number; rwrite?: number } | undefined {
  try {
    const { tag, msg } = decode(frame);
    if (msg.type === MsgType.Rread) return { tag, rread: msg.data.length };
    if (msg.type === MsgType.Rwrite) return { tag, rwrite: msg.count };
    return { tag };
  } catch (err) {
    if (err instanceof ProtocolError) return undefined;
    throw err;
  }
}

/** Goldens, and every way of breaking them that a hostile server might send. */
function fastDecoderCorpus(): Uint8Array[] {
  const frames: Uint8Array[] = [];
  const extra = [
    hex("0b000000", "75", "0100", "00000000"),
    hex("0c000000", "75", "0200", "01000000 ff"),
    hex("0c000000", "75", "0200", "02000000 ff"), // count past the end
    hex("0d000000", "75", "0200", "01000000 ffff"), // count short of the end
    hex("0b000000", "77", "0300", "ffffffff"),
    hex("0b000000", "77", "ffff", "00100000"),
    withSizeField(hex("00000000", "75", "0400", "00000100", ...Array(256).fill("ab"))),
  ];
  for (const base of [...goldens.map((g) => g.bytes), ...extra]) {
    frames.push(base);
    for (let length = 0; length < base.length; length++) {
      frames.push(base.slice(0, length), withSizeField(base.slice(0, length)));
    }
    const longer = new Uint8Array(base.length + 1);
    longer.set(base);
    frames.push(longer, withSizeField(longer));
    if (base.length >= 5) {
      for (const type of [MsgType.Rread, MsgType.Rwrite, MsgType.Rlerror, MsgType.Rclunk, 0]) {
        const retyped = base.slice();
        retyped[4] = type;
        frames.push(retyped);
      }
    }
    if (base.length >= 4) {
      for (const size of [0, base.length - 1, base.length + 1, 0xffffffff]) {
        const resized = base.slice();
        new DataView(resized.buffer).setUint32(0, size, true);
        frames.push(resized);
      }
    }
  }
  const random = prng(0x5eed);
  for (let i = 0; i < 3000; i++) {
    const frame = (i % 2 ? extra[i % extra.length] : goldens[i % goldens.length].bytes).slice();
    const at = Math.floor(random() * frame.length);
    frame[at] = Math.floor(random() * 256);
    frames.push(frame);
  }
  return frames;
}

Deno.test("rreadDataBytes and rwriteCount agree with decode on good and broken frames", () => {
  let rreads = 0;
  let rwrites = 0;
  let others = 0;
  for (const frame of fastDecoderCorpus()) {
    const expected = decodedAs(frame);
    const where = toHex(frame.subarray(0, 40));
    assert.equal(rreadDataBytes(frame), expected?.rread, `rreadDataBytes of ${where}`);
    assert.equal(rwriteCount(frame), expected?.rwrite, `rwriteCount of ${where}`);
    if (expected?.rread !== undefined) {
      rreads++;
      assert.equal(frameTag(frame), expected.tag, `tag of ${where}`);
      assert.deepEqual(
        frame.subarray(RREAD_HEADER_BYTES),
        (decode(frame).msg as Message<typeof MsgType.Rread>).data,
      );
    } else if (expected?.rwrite !== undefined) {
      rwrites++;
      assert.equal(frameTag(frame), expected.tag, `tag of ${where}`);
    } else others++;
  }
  // The corpus has both kinds of well-formed frame, and plenty of the rest.
  assert.ok(rreads >= 20, `only ${rreads} well-formed Rreads`);
  assert.ok(rwrites >= 10, `only ${rwrites} well-formed Rwrites`);
  assert.ok(others >= 1000, `only ${others} other frames`);
});

Deno.test("peekHeader gives the type and tag that decode finds, and refuses a short header", () => {
  for (const golden of goldens) {
    assert.deepEqual(peekHeader(golden.bytes), { type: golden.msg.type, tag: golden.tag });
  }
  for (let length = 0; length < HEADER_BYTES; length++) {
    assert.throws(() => peekHeader(new Uint8Array(length)), ProtocolError, `${length} bytes`);
  }
});

Deno.test("message types are numbered as in Linux include/net/9p/9p.h, and named", () => {
  const linux: [string, number][] = [
    ["Tlcreate", 14],
    ["Tsymlink", 16],
    ["Tmknod", 18],
    ["Trename", 20],
    ["Tsetattr", 26],
    ["Txattrwalk", 30],
    ["Txattrcreate", 32],
    ["Treaddir", 40],
    ["Rreaddir", 41],
    ["Tlink", 70],
    ["Tmkdir", 72],
    ["Trenameat", 74],
    ["Tunlinkat", 76],
    ["Tremove", 122],
  ];
  for (const [name, number] of linux) {
    assert.equal((MsgType as Record<string, number>)[name], number, name);
    assert.equal(msgTypeName(number), name);
  }
});

Deno.test("encodeDirents makes the golden entries' bytes and decodeDirents reads them back", () => {
  const { data, taken } = encodeDirents(dirents, 1 << 20);
  assert.equal(toHex(data), toHex(hex(...direntBytes)));
  assert.equal(taken, 2);
  assert.deepStrictEqual(decodeDirents(hex(...direntBytes)), dirents);
  assert.deepStrictEqual(decodeDirents(new Uint8Array()), []);
});

Deno.test("encodeDirents takes as many entries as fit its byte budget", () => {
  const golden = hex(...direntBytes);
  for (const [budget, count] of [[0, 0], [26, 0], [27, 1], [55, 1], [56, 2], [57, 2]]) {
    const { data, taken } = encodeDirents(dirents, budget);
    assert.equal(taken, count, `budget ${budget}`);
    assert.ok(data.length <= budget, `budget ${budget}`);
    assert.deepEqual(data, golden.subarray(0, data.length), `budget ${budget}`);
    assert.deepStrictEqual(decodeDirents(data), dirents.slice(0, count), `budget ${budget}`);
  }
});

Deno.test("dirent data cut inside an entry is a protocol error", () => {
  const golden = hex(...direntBytes);
  for (let length = 0; length <= golden.length; length++) {
    const cut = golden.slice(0, length);
    if (length === 0 || length === 27 || length === golden.length) {
      assert.equal(decodeDirents(cut).length, length === 0 ? 0 : length === 27 ? 1 : 2);
    } else {
      assert.throws(() => decodeDirents(cut), ProtocolError, `${length} bytes`);
    }
  }
});

Deno.test("a dirent name of ill-formed UTF-8 is a protocol error", () => {
  const bad = hex("00 00000000 0100000000000000", "0100000000000000", "08", "0200 c080");
  assert.throws(() => decodeDirents(bad), ProtocolError);
});

Deno.test("random dirent data decodes to entries or fails with a protocol error, nothing else", () => {
  const random = prng(0xd1e);
  let decoded = 0;
  for (let i = 0; i < 2000; i++) {
    const data = hex(...direntBytes).subarray(0, Math.floor(random() * 57));
    for (let j = 0; j < 3; j++) data[Math.floor(random() * data.length)] = random() * 256;
    try {
      decodeDirents(data);
      decoded++;
    } catch (err) {
      assert.ok(err instanceof ProtocolError, `${toHex(data)}: ${err}`);
    }
  }
  assert.ok(decoded > 10, `only ${decoded} decoded`);
});
