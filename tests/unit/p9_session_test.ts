/**
 * The 9P session against a scripted fake server over an in-memory pipe:
 * version negotiation, many requests in flight, every way a server can break
 * the protocol, disconnects, the in-flight window, Tflush, timeouts, walks
 * and the fid pool.
 */

import assert from "node:assert/strict";
import {
  ConnectionError,
  ErrnoError,
  P9Error,
  ProtocolError,
  TimeoutError,
} from "../../lib/errors.ts";
import { Session } from "../../lib/p9/session.ts";
import { type Message, MsgType, NOTAG, type Qid } from "../../lib/p9/wire.ts";
import {
  connect,
  duplexPair,
  Fake9pServer,
  FILE_QID,
  getattrReply,
  type Request,
  type Script,
  settleWithin,
  withVersion,
} from "./support/fake_9p_server.ts";

const MSIZE = 8192 + 24;

/** A script that answers nothing (after Tversion); the test answers by hand. */
const silent: Script = withVersion(MSIZE, () => {});

/** Answer every request the obvious way: reads get `count` bytes of `tag & 0xff`. */
const helpful: Script = withVersion(MSIZE, (request, server) => {
  server.reply(request.tag, obviousReply(request));
});

function obviousReply(request: Request): Message {
  const msg = request.msg;
  switch (msg.type) {
    case MsgType.Tread:
      return { type: MsgType.Rread, data: new Uint8Array(msg.count).fill(request.tag & 0xff) };
    case MsgType.Twrite:
      return { type: MsgType.Rwrite, count: msg.data.length };
    case MsgType.Tclunk:
      return { type: MsgType.Rclunk };
    case MsgType.Tgetattr:
      return getattrReply(0o100644, 4096);
    case MsgType.Tattach:
      return { type: MsgType.Rattach, qid: FILE_QID };
    case MsgType.Twalk:
      return { type: MsgType.Rwalk, qids: msg.names.map(() => FILE_QID) };
    case MsgType.Tflush:
      return { type: MsgType.Rflush };
    case MsgType.Tfsync:
      return { type: MsgType.Rfsync };
    default:
      return { type: MsgType.Rlerror, ecode: 95 };
  }
}

/** Assert that `promise` rejects with a ConnectionError within `ms`; return it. */
async function rejectsWithConnectionError(
  promise: Promise<unknown>,
  ms = 1000,
): Promise<ConnectionError> {
  const outcome = await settleWithin(promise, ms);
  assert.equal(outcome.status, "rejected", `expected a rejection, got ${outcome.status}`);
  const reason = (outcome as { reason: unknown }).reason;
  assert.ok(reason instanceof ConnectionError, `expected a ConnectionError, got ${reason}`);
  return reason;
}

async function stop(session: Session, server: Fake9pServer): Promise<void> {
  session.close();
  server.disconnect();
  await server.done;
}

Deno.test("version negotiation sends Tversion with NOTAG and adopts a smaller granted msize", async () => {
  const { session, server } = await connect(withVersion(16384, () => {}), { msize: 65536 });
  try {
    const [version] = server.requests;
    assert.equal(version.tag, NOTAG);
    assert.deepEqual(version.msg, { type: MsgType.Tversion, msize: 65536, version: "9P2000.L" });
    assert.equal(session.msize, 16384);
    assert.equal(session.maxPayload, 16384 - 24);
    assert.equal(session.closed, false);
  } finally {
    await stop(session, server);
  }
});

/** Start a session whose Tversion is answered with `reply`; return the error it fails with. */
async function startFailure(reply: Message, msize = 8192): Promise<ConnectionError> {
  const { client, server: end } = duplexPair();
  const server = new Fake9pServer(end, (request, s) => void s.reply(request.tag, reply));
  try {
    return await rejectsWithConnectionError(Session.start(client, { msize }));
  } finally {
    server.disconnect();
    await server.done;
  }
}

Deno.test("a server that grants a larger msize than asked is refused", async () => {
  const err = await startFailure({ type: MsgType.Rversion, msize: 8193, version: "9P2000.L" });
  assert.ok(err.cause instanceof ProtocolError);
  assert.match(err.message, /msize 8193/);
});

Deno.test("a server that grants an msize too small to be useful is refused", async () => {
  const err = await startFailure({ type: MsgType.Rversion, msize: 100, version: "9P2000.L" });
  assert.ok(err.cause instanceof ProtocolError);
});

Deno.test("a server that speaks another protocol version is refused", async () => {
  for (const version of ["9P2000", "9P2000.u", "unknown"]) {
    const err = await startFailure({ type: MsgType.Rversion, msize: 8192, version });
    assert.ok(err.cause instanceof ProtocolError, version);
    assert.match(err.message, new RegExp(version.replace(".", "\\.")));
  }
});

Deno.test("a server that answers Tversion with Rlerror fails the start", async () => {
  const err = await startFailure({ type: MsgType.Rlerror, ecode: 22 });
  assert.ok(err.cause instanceof P9Error);
});

Deno.test("a server that hangs up during negotiation fails the start with a ConnectionError", async () => {
  const { client, server: end } = duplexPair();
  const server = new Fake9pServer(end, (_request, s) => s.disconnect());
  await rejectsWithConnectionError(Session.start(client, { msize: 8192 }));
  await server.done;
});

Deno.test("a frame larger than the negotiated msize kills the session with a protocol error", async () => {
  const { session, server, client } = await connect(silent, { msize: MSIZE });
  const pending = session.clunk(1);
  await server.waitUntil(() => server.outstanding.size === 1, "Tclunk");
  const huge = new Uint8Array(MSIZE + 1);
  new DataView(huge.buffer).setUint32(0, huge.length, true);
  huge[4] = MsgType.Rread;
  await server.sendRaw(huge);
  const err = await rejectsWithConnectionError(pending);
  assert.ok(err.cause instanceof ProtocolError, `cause was ${err.cause}`);
  assert.equal(session.closed, true);
  assert.equal(await session.dead, err);
  assert.equal(client.closed, true, "the session closes its stream");
  await server.done;
});

Deno.test("many requests are in flight at once and out-of-order replies reach their callers", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  try {
    const count = 40;
    const reads = Array.from({ length: count }, (_, i) => {
      const dest = new Uint8Array(16);
      return session.read(7, i * 16, dest).then((n) => ({ i, n, dest }));
    });
    await server.waitUntil(() => server.outstanding.size >= count, `${count} Treads`);
    assert.ok(server.maxOutstanding >= count);
    // Answer in reverse order; each reply's bytes identify the request it answers.
    const requests = [...server.outstanding.values()].reverse();
    for (const request of requests) {
      const msg = request.msg as Message<typeof MsgType.Tread>;
      const index = Number(msg.offset) / 16;
      await server.reply(request.tag, {
        type: MsgType.Rread,
        data: new Uint8Array(msg.count).fill(index),
      });
    }
    for (const { i, n, dest } of await Promise.all(reads)) {
      assert.equal(n, 16);
      assert.deepEqual(dest, new Uint8Array(16).fill(i), `read ${i}`);
    }
    const tags = new Set(server.requestsOf(MsgType.Tread).map((r) => r.tag));
    assert.equal(tags.size, count, "every outstanding request has its own tag");
    assert.equal(session.closed, false);
  } finally {
    await stop(session, server);
  }
});

Deno.test("a reply with an unknown tag kills the session and fails every pending request", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const pending = Array.from({ length: 5 }, (_, i) => session.clunk(i + 1));
  await server.waitUntil(() => server.outstanding.size === 5, "5 Tclunks");
  const used = new Set(server.outstanding.keys());
  let unknown = 1000;
  while (used.has(unknown)) unknown++;
  await server.reply(unknown, { type: MsgType.Rclunk });
  for (const request of pending) {
    const err = await rejectsWithConnectionError(request);
    assert.ok(err.cause instanceof ProtocolError);
    assert.match(err.message, /unknown tag/);
  }
  assert.equal(session.closed, true);
  await server.done;
});

Deno.test("a reply of the wrong type kills the session", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const clunk = session.clunk(3);
  const other = session.fsync(4);
  await server.waitUntil(() => server.outstanding.size === 2, "2 requests");
  const tag = server.requestsOf(MsgType.Tclunk)[0].tag;
  await server.reply(tag, { type: MsgType.Rwrite, count: 0 });
  const err = await rejectsWithConnectionError(clunk);
  assert.ok(err.cause instanceof ProtocolError);
  await rejectsWithConnectionError(other);
  await rejectsWithConnectionError(session.fsync(4), 100);
  await server.done;
});

Deno.test("Rlerror becomes a P9Error with the errno's name and the session stays usable", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    if (request.msg.type === MsgType.Tgetattr) {
      server.reply(request.tag, { type: MsgType.Rlerror, ecode: 2 });
    } else server.reply(request.tag, obviousReply(request));
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    const err = await settleWithin(session.getattr(1, 0x7ffn));
    assert.equal(err.status, "rejected");
    const reason = (err as { reason: unknown }).reason;
    assert.ok(reason instanceof P9Error, `got ${reason}`);
    assert.equal(reason.code, "ENOENT");
    assert.equal(reason.errno, 2);
    assert.match(reason.message, /getattr/);
    assert.equal(session.closed, false);
    await session.clunk(1);
    await session.fsync(1);
  } finally {
    await stop(session, server);
  }
});

Deno.test("a failed read or write names its byte count and offset", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rlerror, ecode: 5 });
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    await assert.rejects(session.read(1, 8192, new Uint8Array(100)), /read 100 bytes at 8192.*EIO/);
    await assert.rejects(session.write(1, 4097, new Uint8Array(3)), /write 3 bytes at 4097.*EIO/);
  } finally {
    await stop(session, server);
  }
});

Deno.test("Rerror (nfs-ganesha's error number) also becomes a P9Error", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rerror, ecode: 13 });
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    await assert.rejects(session.clunk(1), (err: unknown) => {
      assert.ok(err instanceof P9Error);
      assert.equal(err.code, "EACCES");
      return true;
    });
    assert.equal(session.closed, false);
  } finally {
    await stop(session, server);
  }
});

for (const errno of [0, 41, 134, 9999, 0xffffffff]) {
  Deno.test(`Rlerror with errno ${errno}, which Linux does not define, kills the session`, async () => {
    const script = withVersion(MSIZE, (request, server) => {
      server.reply(request.tag, { type: MsgType.Rlerror, ecode: errno });
    });
    const { session, server } = await connect(script, { msize: MSIZE });
    const err = await rejectsWithConnectionError(session.clunk(1));
    assert.ok(err.cause instanceof ProtocolError);
    assert.equal(session.closed, true);
    await server.done;
  });
}

Deno.test("a disconnect with 50 requests pending fails them all at once, and later ones too", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const pending = Array.from(
    { length: 50 },
    (_, i) => session.read(1, i * 100, new Uint8Array(100)),
  );
  await server.waitUntil(() => server.outstanding.size === 50, "50 Treads");
  server.disconnect();
  const outcomes = await settleWithin(Promise.allSettled(pending), 500);
  assert.equal(outcomes.status, "fulfilled", "pending requests did not fail promptly");
  for (const outcome of (outcomes as { value: PromiseSettledResult<number>[] }).value) {
    assert.equal(outcome.status, "rejected");
    assert.ok((outcome as PromiseRejectedResult).reason instanceof ConnectionError);
  }
  assert.equal(session.closed, true);
  await rejectsWithConnectionError(session.read(1, 0, new Uint8Array(1)), 100);
  await rejectsWithConnectionError(session.clunk(1), 100);
  await server.done;
});

Deno.test("close() fails pending requests with a retriable ConnectionError", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const pending = session.fsync(1);
  await server.waitUntil(() => server.outstanding.size === 1, "Tfsync");
  session.close("test over");
  const err = await rejectsWithConnectionError(pending);
  assert.match(err.message, /test over/);
  await server.done;
});

Deno.test("the session never has more than maxInflight requests outstanding", async () => {
  const maxInflight = 4;
  // Answer each request a little later, so that the window is what limits the client.
  const script = withVersion(MSIZE, (request, server) => {
    setTimeout(() => server.reply(request.tag, obviousReply(request)), 1);
  });
  const { session, server } = await connect(script, { msize: MSIZE, maxInflight });
  try {
    const reads = Array.from(
      { length: 30 },
      (_, i) => session.read(1, i, new Uint8Array(8)),
    );
    assert.ok(session.inflight <= maxInflight);
    const counts = await Promise.all(reads);
    assert.deepEqual(counts, Array(30).fill(8));
    assert.equal(server.requestsOf(MsgType.Tread).length, 30);
    assert.equal(server.maxOutstanding, maxInflight, "the window was used but not exceeded");
    assert.equal(session.inflight, 0);
  } finally {
    await stop(session, server);
  }
});

Deno.test("requests waiting for a window slot fail when the session dies", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE, maxInflight: 2 });
  const reads = Array.from({ length: 6 }, (_, i) => session.read(1, i, new Uint8Array(1)));
  await server.waitUntil(() => server.outstanding.size === 2, "2 Treads");
  server.disconnect();
  for (const read of reads) await rejectsWithConnectionError(read);
  assert.equal(server.requestsOf(MsgType.Tread).length, 2);
  await server.done;
});

Deno.test("an aborted request sends Tflush for its tag, which is not reused until Rflush", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  try {
    const controller = new AbortController();
    const dest = new Uint8Array(8);
    const read = session.read(1, 0, dest, controller.signal);
    await server.waitUntil(() => server.outstanding.size === 1, "Tread");
    const oldtag = server.requestsOf(MsgType.Tread)[0].tag;
    controller.abort(new Error("caller gave up"));
    const outcome = await settleWithin(read, 500);
    assert.equal(outcome.status, "rejected");
    assert.match(String((outcome as { reason: unknown }).reason), /caller gave up/);

    await server.waitUntil(() => server.requestsOf(MsgType.Tflush).length === 1, "Tflush");
    const flush = server.requestsOf(MsgType.Tflush)[0];
    assert.equal((flush.msg as Message<typeof MsgType.Tflush>).oldtag, oldtag);
    assert.notEqual(flush.tag, oldtag);

    // While the flush is outstanding, new requests must not get the old tag.
    const more = Array.from({ length: 5 }, (_, i) => session.clunk(10 + i));
    await server.waitUntil(() => server.requestsOf(MsgType.Tclunk).length === 5, "5 Tclunks");
    for (const clunk of server.requestsOf(MsgType.Tclunk)) {
      assert.notEqual(clunk.tag, oldtag, "old tag reused before Rflush");
      assert.notEqual(clunk.tag, flush.tag);
    }
    // The server may still answer the old request before Rflush; that is ignored.
    await server.reply(oldtag, { type: MsgType.Rread, data: new Uint8Array(8).fill(9) });
    await server.reply(flush.tag, { type: MsgType.Rflush });
    for (const clunk of server.requestsOf(MsgType.Tclunk)) {
      await server.reply(clunk.tag, { type: MsgType.Rclunk });
    }
    await Promise.all(more);
    assert.deepEqual(dest, new Uint8Array(8), "a late reply must not write the abandoned buffer");
    assert.equal(session.closed, false);

    // After Rflush the tag is free again.
    const tagsBefore = server.requests.length;
    const later = Array.from({ length: 8 }, (_, i) => session.clunk(20 + i));
    await server.waitUntil(() => server.requests.length === tagsBefore + 8, "8 more Tclunks");
    const laterTags = server.requests.slice(tagsBefore).map((r) => r.tag);
    assert.ok(laterTags.includes(oldtag), `old tag ${oldtag} never reused: ${laterTags}`);
    for (const request of server.requests.slice(tagsBefore)) {
      await server.reply(request.tag, { type: MsgType.Rclunk });
    }
    await Promise.all(later);
  } finally {
    await stop(session, server);
  }
});

Deno.test("a request whose signal is already aborted is not sent", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  try {
    const controller = new AbortController();
    controller.abort();
    await assert.rejects(session.read(1, 0, new Uint8Array(1), controller.signal));
    assert.equal(server.requests.length, 1, "only Tversion was sent");
  } finally {
    await stop(session, server);
  }
});

Deno.test("a server that never answers makes the request fail with a TimeoutError", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE, timeoutMs: 200 });
  const err = await rejectsWithConnectionError(session.fsync(1), 3000);
  assert.ok(err instanceof TimeoutError, `got ${err.name}: ${err.message}`);
  assert.equal(session.closed, true);
  await server.done;
});

Deno.test("an Rread carrying more bytes than asked for is a protocol error", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rread, data: new Uint8Array(17) });
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  const err = await rejectsWithConnectionError(session.read(1, 0, new Uint8Array(16)));
  assert.ok(err.cause instanceof ProtocolError, `cause was ${err.cause}`);
  assert.equal(session.closed, true);
  await server.done;
});

/** Answer the one outstanding request with a `reply` frame carrying `body` as is. */
async function answerRaw(server: Fake9pServer, reply: number, body: number[]): Promise<void> {
  await server.waitUntil(() => server.outstanding.size === 1, "one request");
  const [tag] = server.outstanding.keys();
  const frame = new Uint8Array(7 + body.length);
  new DataView(frame.buffer).setUint32(0, frame.length, true);
  frame.set([reply, tag & 0xff, tag >> 8], 4);
  frame.set(body, 7);
  await server.sendRaw(frame);
}

Deno.test("an Rread whose count runs past its frame is a protocol error", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const read = session.read(1, 0, new Uint8Array(16));
  await answerRaw(server, MsgType.Rread, [5, 0, 0, 0, 1, 2, 3, 4]);
  const err = await rejectsWithConnectionError(read);
  assert.ok(err.cause instanceof ProtocolError, `cause was ${err.cause}`);
  assert.match(err.message, /truncated 9P frame: data needs 5 bytes, 4 left/);
  assert.equal(session.closed, true);
  await server.done;
});

Deno.test("an Rwrite with a byte after its count is a protocol error", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const write = session.write(1, 0, new Uint8Array(4));
  await answerRaw(server, MsgType.Rwrite, [4, 0, 0, 0, 0]);
  const err = await rejectsWithConnectionError(write);
  assert.ok(err.cause instanceof ProtocolError, `cause was ${err.cause}`);
  assert.match(err.message, /Rwrite frame has 1 bytes after its last field/);
  await server.done;
});

Deno.test("an Rread in reply to a Twrite is a protocol error", async () => {
  const { session, server } = await connect(silent, { msize: MSIZE });
  const write = session.write(1, 0, new Uint8Array(4));
  await answerRaw(server, MsgType.Rread, [0, 0, 0, 0]);
  const err = await rejectsWithConnectionError(write);
  assert.ok(err.cause instanceof ProtocolError, `cause was ${err.cause}`);
  assert.match(err.message, /Rread in reply to a request expecting Rwrite/);
  await server.done;
});

Deno.test("an Rwrite claiming more bytes than were sent is a protocol error", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rwrite, count: 5 });
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  const err = await rejectsWithConnectionError(session.write(1, 0, new Uint8Array(4)));
  assert.ok(err.cause instanceof ProtocolError);
  await server.done;
});

Deno.test("a read copies the reply into the caller's buffer and reports short reads", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rread, data: new Uint8Array([1, 2, 3]) });
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    const dest = new Uint8Array(8);
    assert.equal(await session.read(1, 0, dest), 3);
    assert.deepEqual(dest, new Uint8Array([1, 2, 3, 0, 0, 0, 0, 0]));
    assert.equal(session.stats.bytesRead, 3);
  } finally {
    await stop(session, server);
  }
});

Deno.test("a walk of 20 names is sent as two Twalks, the second from the new fid", async () => {
  const { session, server } = await connect(helpful, { msize: MSIZE });
  try {
    const names = Array.from({ length: 20 }, (_, i) => `d${i}`);
    const { fid, qids } = await session.walk(1, names);
    assert.equal(qids.length, 20);
    const walks = server.requestsOf(MsgType.Twalk).map((r) => r.msg);
    assert.equal(walks.length, 2);
    assert.deepEqual(walks[0], {
      type: MsgType.Twalk,
      fid: 1,
      newfid: fid,
      names: names.slice(0, 16),
    });
    assert.deepEqual(walks[1], { type: MsgType.Twalk, fid, newfid: fid, names: names.slice(16) });
  } finally {
    await stop(session, server);
  }
});

Deno.test("a walk that stops short fails with ENOENT and frees the new fid", async () => {
  /** Walks through every name of a full 16-name Twalk, through `count` of any other. */
  const stopAt = (count: number): Script =>
    withVersion(MSIZE, (request, server) => {
      const msg = request.msg;
      if (msg.type === MsgType.Twalk) {
        const walked = msg.names.length === 16 ? 16 : Math.min(count, msg.names.length);
        const qids: Qid[] = msg.names.slice(0, walked).map(() => FILE_QID);
        server.reply(request.tag, { type: MsgType.Rwalk, qids });
      } else server.reply(request.tag, obviousReply(request));
    });

  // Stops inside the first Twalk: no fid was created on the server, nothing to clunk.
  {
    const { session, server } = await connect(stopAt(1), { msize: MSIZE });
    try {
      const probe = session.allocFid();
      session.releaseFid(probe);
      await assert.rejects(session.walk(1000, ["a", "b", "c"]), (err) => {
        assert.ok(err instanceof ErrnoError && !(err instanceof P9Error), `got ${err}`);
        assert.equal(err.code, "ENOENT");
        assert.match(err.message, /a\/b/);
        return true;
      });
      assert.equal(server.requestsOf(MsgType.Tclunk).length, 0);
      assert.equal(session.allocFid(), probe, "the new fid went back to the pool");
      assert.equal(session.closed, false);
    } finally {
      await stop(session, server);
    }
  }

  // Stops inside the second Twalk: the fid exists after the first, so it is clunked.
  {
    const { session, server } = await connect(stopAt(2), { msize: MSIZE });
    try {
      const names = Array.from({ length: 20 }, (_, i) => `d${i}`);
      const walk = await settleWithin(session.walk(1000, names));
      assert.equal(walk.status, "rejected");
      assert.equal(((walk as { reason: unknown }).reason as ErrnoError).code, "ENOENT");
      const walks = server.requestsOf(MsgType.Twalk);
      assert.equal(walks.length, 2);
      const newfid = (walks[0].msg as Message<typeof MsgType.Twalk>).newfid;
      const clunks = server.requestsOf(MsgType.Tclunk).map((r) => r.msg);
      assert.deepEqual(clunks, [{ type: MsgType.Tclunk, fid: newfid }]);
      assert.equal(session.allocFid(), newfid, "the clunked fid went back to the pool");
    } finally {
      await stop(session, server);
    }
  }
});

Deno.test("a walk refused with Rlerror frees the new fid", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    if (request.msg.type === MsgType.Twalk) {
      server.reply(request.tag, { type: MsgType.Rlerror, ecode: 13 });
    } else server.reply(request.tag, obviousReply(request));
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    const before = session.allocFid();
    session.releaseFid(before);
    await assert.rejects(session.walk(99, ["x"]), P9Error);
    assert.equal(session.allocFid(), before);
  } finally {
    await stop(session, server);
  }
});

Deno.test("fids are reused after clunk, even when the clunk fails", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    const msg = request.msg;
    if (msg.type === MsgType.Tclunk && msg.fid === 2) {
      server.reply(request.tag, { type: MsgType.Rlerror, ecode: 9 });
    } else server.reply(request.tag, obviousReply(request));
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    const a = await session.attach("root", "/img", 0);
    const b = await session.attach("root", "/img", 0);
    assert.notEqual(a.fid, b.fid);
    await session.clunk(a.fid);
    assert.equal(session.allocFid(), a.fid);
    await assert.rejects(session.clunk(b.fid), P9Error);
    assert.equal(session.allocFid(), b.fid);
    const attaches = server.requestsOf(MsgType.Tattach).map((r) => r.msg);
    assert.deepEqual(attaches[0], {
      type: MsgType.Tattach,
      fid: a.fid,
      afid: 0xffffffff,
      uname: "root",
      aname: "/img",
      nUname: 0,
    });
  } finally {
    await stop(session, server);
  }
});

Deno.test("a failed attach returns its fid to the pool", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rlerror, ecode: 1 });
  });
  const { session, server } = await connect(script, { msize: MSIZE });
  try {
    const fid = session.allocFid();
    session.releaseFid(fid);
    await assert.rejects(session.attach("root", "/nope", 0), (err) => {
      assert.ok(err instanceof P9Error);
      assert.equal(err.code, "EPERM");
      return true;
    });
    assert.equal(session.allocFid(), fid);
  } finally {
    await stop(session, server);
  }
});

Deno.test("frames written in small pieces by the transport still arrive whole", async () => {
  const { session, server } = await connect(helpful, { msize: MSIZE }, { clientMaxWriteBytes: 3 });
  try {
    const data = new Uint8Array(100).map((_, i) => i);
    assert.equal(await session.write(1, 4096, data), 100);
    const [write] = server.requestsOf(MsgType.Twrite);
    assert.deepEqual(write.msg, { type: MsgType.Twrite, fid: 1, offset: 4096n, data });
  } finally {
    await stop(session, server);
  }
});

Deno.test("replies that arrive a byte at a time are reassembled", async () => {
  const script = withVersion(MSIZE, (request, server) => {
    server.reply(request.tag, { type: MsgType.Rread, data: new Uint8Array([5, 6, 7]) });
  });
  const { session, server } = await connect(script, { msize: MSIZE }, { clientMaxReadBytes: 1 });
  try {
    const dest = new Uint8Array(3);
    assert.equal(await session.read(1, 0, dest), 3);
    assert.deepEqual(dest, new Uint8Array([5, 6, 7]));
  } finally {
    await stop(session, server);
  }
});
