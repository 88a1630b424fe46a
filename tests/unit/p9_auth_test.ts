/**
 * Attaching with MUNGE authentication (lib/p9/auth.ts) against scripted fake
 * servers and a fake MUNGE: the exchange diod expects (Tauth, the credential
 * in a Twrite at offset 0, Tattach naming the afid, Tclunk of the afid), the
 * fallback of `auto` when a server takes no authentication, every failure a
 * user can act on as one AuthError line with exit code 3, and a fresh
 * credential for every session, reconnects included.
 */

import assert from "node:assert/strict";
import {
  AuthError,
  ExitCode,
  exitCodeFor,
  isRetriable,
  P9Error,
  ProtocolError,
} from "../../lib/errors.ts";
import { Errno } from "../../lib/errno.ts";
import { ResilientImage } from "../../lib/failover/mod.ts";
import { Image } from "../../lib/image.ts";
import { authenticatedAttach, type AuthMode, type AuthPolicy } from "../../lib/p9/auth.ts";
import { MsgType, NOFID, QidType } from "../../lib/p9/wire.ts";
import { parseSpec } from "../../lib/spec.ts";
import { randomBytes } from "../../tools/random.ts";
import { waitFor } from "../support/wait.ts";
import {
  connect,
  DIR_QID,
  type Fake9pServer,
  imageFileScript,
  listenUnix,
  type Request,
  type Script,
  withVersion,
} from "./support/fake_9p_server.ts";
import { FakeMunge } from "./support/fake_munge.ts";

const MSIZE = 8192 + 24;
const WHO = { uname: "root", aname: "/img", nUname: 0 };

/** How a scripted server answers the requests authentication is made of. */
interface GateOptions {
  /** Tauth: accepted (Rauth) or answered with this errno. */
  tauth?: "accept" | number;
  /** Tattach naming an afid: checked with `decoder` (accepted without one), or this errno. */
  attachWithAfid?: "check" | number;
  /** Tattach with NOFID: accepted, or this errno. */
  attachWithoutAfid?: "accept" | number;
  /** Decodes the credential written into the afid, as munged would. */
  decoder?: FakeMunge;
}

/**
 * A script that answers Tauth, the Twrites into an afid, Tattach and the
 * afid's Tclunk as `options` say, and hands everything else (and admitted
 * attaches) to `next`.
 */
function authGate(options: GateOptions, next: Script): Script {
  // Fids are per connection, and one script serves every connection of a listener.
  const byConnection = new WeakMap<Fake9pServer, Map<number, string>>();
  return async (request: Request, server: Fake9pServer) => {
    const msg = request.msg;
    let credentials = byConnection.get(server);
    if (!credentials) byConnection.set(server, credentials = new Map());
    const fail = (errno: number) =>
      server.reply(request.tag, { type: MsgType.Rlerror, ecode: errno });
    switch (msg.type) {
      case MsgType.Tauth: {
        const tauth = options.tauth ?? "accept";
        if (tauth !== "accept") return void fail(tauth);
        credentials.set(msg.afid, "");
        return void server.reply(request.tag, {
          type: MsgType.Rauth,
          aqid: { type: QidType.AUTH, version: 0, path: 0n },
        });
      }
      case MsgType.Twrite: {
        const sofar = credentials.get(msg.fid);
        if (sofar === undefined) return next(request, server);
        assert.equal(Number(msg.offset), sofar.length, "the credential is written in order");
        credentials.set(msg.fid, sofar + new TextDecoder().decode(msg.data));
        return void server.reply(request.tag, { type: MsgType.Rwrite, count: msg.data.length });
      }
      case MsgType.Tclunk:
        if (!credentials.delete(msg.fid)) return next(request, server);
        return void server.reply(request.tag, { type: MsgType.Rclunk });
      case MsgType.Tattach: {
        if (msg.afid === NOFID) {
          const rule = options.attachWithoutAfid ?? "accept";
          if (rule !== "accept") return void fail(rule);
          return next(request, server);
        }
        const rule = options.attachWithAfid ?? "check";
        if (rule !== "check") return void fail(rule);
        const credential = credentials.get(msg.afid);
        if (credential === undefined) return void fail(Errno.EPERM);
        if (options.decoder) {
          try {
            const { uid } = await options.decoder.decode(credential);
            if (uid !== msg.nUname) return void fail(Errno.EPERM);
          } catch {
            return void fail(Errno.EPERM);
          }
        }
        return next(request, server);
      }
      default:
        return next(request, server);
    }
  };
}

/** Attaches end here: an Rattach for each. */
const attachOnly: Script = (request, server) => {
  if (request.msg.type === MsgType.Tattach) {
    return void server.reply(request.tag, { type: MsgType.Rattach, qid: DIR_QID });
  }
  return void server.reply(request.tag, { type: MsgType.Rlerror, ecode: Errno.EOPNOTSUPP });
};

/** Run one authenticated attach against a server scripted by `gate`. */
async function attachWith(
  gate: GateOptions,
  policy: AuthPolicy | undefined,
  body: (result: Promise<{ fid: number }>, server: Fake9pServer) => Promise<void>,
  msize = MSIZE,
): Promise<void> {
  const { session, server } = await connect(withVersion(msize, authGate(gate, attachOnly)), {
    msize,
  });
  try {
    await body(authenticatedAttach(session, WHO, policy), server);
  } finally {
    session.close();
    await server.done;
  }
}

function policy(mode: AuthMode, munge = new FakeMunge()): AuthPolicy & { munge: FakeMunge } {
  return { mode, credentials: munge, credentialUid: 0, munge };
}

/** The message types the server received, in order. */
function typesOf(server: Fake9pServer): number[] {
  return server.requests.map((r) => r.msg.type);
}

/** `promise` rejects with an AuthError whose message matches `pattern`: exit 3, not retriable. */
async function rejectsWithAuthError(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof AuthError, `expected AuthError, got ${err}`);
    assert.match(err.message, pattern);
    assert.doesNotMatch(err.message, /\n/, "one line");
    assert.equal(exitCodeFor(err), ExitCode.permission);
    assert.equal(isRetriable(err), false);
    return true;
  });
}

Deno.test("auto against a server that asks: Tauth, the credential written at offset 0, Tattach naming the afid, Tclunk of the afid", async () => {
  const auth = policy("auto");
  await attachWith({}, auth, async (attached, server) => {
    const { fid } = await attached;
    await server.waitUntil(() => server.requestsOf(MsgType.Tclunk).length === 1, "the Tclunk");
    assert.deepEqual(typesOf(server), [
      MsgType.Tversion,
      MsgType.Tauth,
      MsgType.Twrite,
      MsgType.Tattach,
      MsgType.Tclunk,
    ]);
    const tauth = server.requestsOf(MsgType.Tauth)[0].msg;
    assert.deepEqual(
      { uname: tauth.uname, aname: tauth.aname, nUname: tauth.nUname },
      WHO,
      "Tauth names who attaches to what",
    );
    const twrite = server.requestsOf(MsgType.Twrite)[0].msg;
    assert.equal(twrite.fid, tauth.afid);
    assert.equal(twrite.offset, 0n);
    assert.equal(auth.munge.encoded.length, 1);
    assert.deepEqual(
      twrite.data,
      new TextEncoder().encode(auth.munge.encoded[0]),
      "the credential's ASCII text, no NUL",
    );
    const tattach = server.requestsOf(MsgType.Tattach)[0].msg;
    assert.equal(tattach.afid, tauth.afid);
    assert.equal(tattach.fid, fid);
    assert.notEqual(fid, tauth.afid);
    assert.equal(server.requestsOf(MsgType.Tclunk)[0].msg.fid, tauth.afid);
  });
});

for (
  const [server, errno] of [["diod", Errno.ENOENT], ["nfs-ganesha", Errno.EOPNOTSUPP]] as const
) {
  Deno.test(`auto against a server that takes no authentication (Tauth ${errno}, as ${server}): attach with NOFID, no credential made`, async () => {
    const auth = policy("auto");
    await attachWith({ tauth: errno }, auth, async (attached, fake) => {
      await attached;
      assert.deepEqual(typesOf(fake), [MsgType.Tversion, MsgType.Tauth, MsgType.Tattach]);
      assert.equal(fake.requestsOf(MsgType.Tattach)[0].msg.afid, NOFID);
      assert.equal(auth.munge.encoded.length, 0);
    });
  });
}

Deno.test("munge against a server that takes no authentication is an AuthError, not an unauthenticated attach", async () => {
  await attachWith({ tauth: Errno.ENOENT }, policy("munge"), async (attached, server) => {
    await rejectsWithAuthError(attached, /takes no authentication .*--auth munge/);
    assert.equal(server.requestsOf(MsgType.Tattach).length, 0);
  });
});

Deno.test("none attaches with NOFID and sends no Tauth", async () => {
  const auth = policy("none");
  await attachWith({}, auth, async (attached, server) => {
    await attached;
    assert.deepEqual(typesOf(server), [MsgType.Tversion, MsgType.Tattach]);
    assert.equal(auth.munge.encoded.length, 0);
  });
});

Deno.test("none against a server that requires authentication says so, instead of a bare EPERM", async () => {
  await attachWith({ attachWithoutAfid: Errno.EPERM }, policy("none"), async (attached) => {
    await rejectsWithAuthError(attached, /requires authentication \(EPERM\).*--auth none/);
  });
});

Deno.test("none: an EPERM from a server that takes no authentication stays the server's answer", async () => {
  await attachWith(
    { attachWithoutAfid: Errno.EPERM, tauth: Errno.ENOENT },
    policy("none"),
    async (attached) => {
      await assert.rejects(attached, (err: unknown) => {
        assert.ok(err instanceof P9Error && !(err instanceof AuthError), String(err));
        assert.equal(err.code, "EPERM");
        return true;
      });
    },
  );
});

Deno.test("a credential the server refuses is an AuthError that says so (exit 3, not retriable)", async () => {
  await attachWith({ attachWithAfid: Errno.EPERM }, policy("auto"), async (attached, server) => {
    await rejectsWithAuthError(attached, /the server refused our MUNGE credential \(EPERM/);
    await server.waitUntil(() => server.requestsOf(MsgType.Tclunk).length === 1, "the Tclunk");
  });
});

Deno.test("a credential made with another key is refused by the server's munged", async () => {
  const server = new FakeMunge(0, "key-b");
  await attachWith({ decoder: server }, policy("auto"), async (attached) => {
    await rejectsWithAuthError(attached, /refused our MUNGE credential/);
  });
});

Deno.test("munged not running: the error says the server requires MUNGE and munged is not running; the afid is clunked", async () => {
  const auth = policy("auto");
  auth.munge.failure = FakeMunge.mungedDown();
  await attachWith({}, auth, async (attached, server) => {
    await rejectsWithAuthError(
      attached,
      /requires MUNGE authentication, but munged is not running \(no socket at/,
    );
    await server.waitUntil(() => server.requestsOf(MsgType.Tclunk).length === 1, "the Tclunk");
    assert.equal(server.requestsOf(MsgType.Twrite).length, 0);
    assert.equal(server.requestsOf(MsgType.Tattach).length, 0);
  });
});

Deno.test("a Tauth refused with another errno is an AuthError naming it", async () => {
  await attachWith({ tauth: Errno.EPERM }, policy("auto"), async (attached) => {
    await rejectsWithAuthError(
      attached,
      /refused to start authentication for uid 0 \(Tauth: EPERM\)/,
    );
  });
});

Deno.test("MUNGE cannot vouch for a --uid other than this process's", async () => {
  const auth = { ...policy("auto"), credentialUid: 1000 };
  await attachWith({}, auth, async (attached) => {
    await rejectsWithAuthError(attached, /vouches for uid 1000 .*cannot authenticate uid 0/);
    assert.equal(auth.munge.encoded.length, 0, "no credential made for nothing");
  });
});

Deno.test("a credential longer than one Twrite goes in order, offset after offset", async () => {
  const long = `MUNGE:${"x".repeat(10_000)}:`;
  const auth: AuthPolicy = {
    mode: "munge",
    credentials: { encode: () => Promise.resolve(long) },
    credentialUid: 0,
  };
  await attachWith({}, auth, async (attached, server) => {
    await attached;
    const writes = server.requestsOf(MsgType.Twrite).map((r) => r.msg);
    assert.deepEqual(writes.map((w) => Number(w.offset)), [0, 4096, 8192]);
    const written = writes.map((w) => new TextDecoder().decode(w.data)).join("");
    assert.equal(written, long);
  }, 4096 + 24);
});

Deno.test("a server that takes none of the credential breaks the protocol", async () => {
  const gate = authGate({}, attachOnly);
  const script: Script = (request, server) => {
    if (request.msg.type === MsgType.Twrite) {
      return void server.reply(request.tag, { type: MsgType.Rwrite, count: 0 });
    }
    return gate(request, server);
  };
  const { session, server } = await connect(withVersion(MSIZE, script), { msize: MSIZE });
  try {
    await assert.rejects(authenticatedAttach(session, WHO, policy("auto")), ProtocolError);
  } finally {
    session.close();
    await server.done;
  }
});

Deno.test("every session mints a fresh credential: each of several connections, and a reconnect", async () => {
  const file = randomBytes(64 * 1024, 9);
  const munged = new FakeMunge(0);
  const client = new FakeMunge(0);
  const fake = await listenUnix(authGate({ decoder: munged }, imageFileScript(file)));
  try {
    const spec = parseSpec(`unix:${fake.path}:/img`);
    const options = { auth: "auto" as const, credentials: client, uid: 0, connections: 3 };
    const image = await Image.open(spec, options);
    await image.close();
    assert.equal(client.encoded.length, 3);
    assert.equal(new Set(client.encoded).size, 3, "three different credentials");
    assert.deepEqual(munged.decoded, client.encoded, "each accepted once");

    const resilient = await ResilientImage.open([spec], {
      ...options,
      connections: 1,
      backoff: { initialMs: 5, maxMs: 20, factor: 2 },
    });
    try {
      const before = client.encoded.length;
      const opened = fake.servers.length;
      fake.servers[opened - 1].disconnect();
      const dest = new Uint8Array(4096);
      await resilient.read(8192, dest);
      assert.deepEqual(dest, file.subarray(8192, 8192 + 4096));
      await waitFor(() => resilient.reconnects === 1, "the reconnect", 5000);
      assert.equal(client.encoded.length, before + 1, "the reconnect minted one more");
      assert.deepEqual(munged.decoded, client.encoded, "none was replayed");
    } finally {
      await resilient.close();
    }
  } finally {
    await fake.close();
  }
});

Deno.test("Image.open without an auth mode attaches without authentication, as before", async () => {
  const fake = await listenUnix(
    authGate({ attachWithoutAfid: Errno.EPERM }, imageFileScript(new Uint8Array(10))),
  );
  try {
    await assert.rejects(
      Image.open(parseSpec(`unix:${fake.path}:/img`)),
      (err: unknown) => err instanceof P9Error && !(err instanceof AuthError),
    );
    assert.equal(fake.servers[0].requestsOf(MsgType.Tauth).length, 0);
  } finally {
    await fake.close();
  }
});
