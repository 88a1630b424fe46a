/**
 * Attaching with authentication: the MUNGE scheme of diod, the 9P server
 * that asks for it (its default configuration requires it).
 *
 * ```text
 * Tauth  afid uname aname n_uname    → Rauth aqid     (or Rlerror: none needed)
 * Twrite afid 0 "MUNGE:...:"         → Rwrite count   (no NUL; more Twrites if long)
 * Tattach fid afid uname aname n_uname → Rattach qid
 * Tclunk afid
 * ```
 *
 * A server that needs no authentication answers Tauth with Rlerror: diod
 * ENOENT, nfs-ganesha EOPNOTSUPP; the client then attaches with afid NOFID.
 * The credential is minted for each session (reconnects included): munged
 * refuses a replayed one, and one expires after its TTL (300 s by default).
 * It vouches for this process's uid, which the server compares with n_uname.
 *
 * @module
 */

import { Errno, errnoName } from "../errno.ts";
import { AuthError, P9Error, ProtocolError } from "../errors.ts";
import type { Session } from "./session.ts";
import type { Qid } from "./wire.ts";

/**
 * `auto`: authenticate with MUNGE when the server asks for it (Tauth
 * succeeds), else attach without; `munge`: always, and fail against a server
 * that takes no authentication; `none`: never.
 */
export type AuthMode = "auto" | "munge" | "none";

/** Every {@link AuthMode}, as `--auth` accepts them. */
export const AUTH_MODES: readonly AuthMode[] = ["auto", "munge", "none"];

/** Where MUNGE credentials come from: libmunge (lib/kernel/munge.ts), or a fake in tests. */
export interface CredentialSource {
  /** A fresh credential for this process: the ASCII `MUNGE:...:` text. */
  encode(): Promise<string>;
}

/** How a session authenticates its attach. */
export interface AuthPolicy {
  mode: AuthMode;
  /** Used when the server asks for authentication (`auto`) or always (`munge`). */
  credentials: CredentialSource;
  /** The uid the credentials vouch for: this process's (default `Deno.uid()`). */
  credentialUid?: number;
}

/** Who attaches to what. */
export interface AttachRequest {
  uname: string;
  aname: string;
  /** The numeric uid sent as n_uname. */
  nUname: number;
}

/** Tauth answers meaning "no authentication here": diod's ENOENT, nfs-ganesha's EOPNOTSUPP. */
const notRequired = new Set<number>([Errno.ENOENT, Errno.EOPNOTSUPP]);
/** Attach answers meaning "you may not". */
const refused = new Set<number>([Errno.EPERM, Errno.EACCES]);

/**
 * Attach as `request` says, authenticating as `policy` says (no policy:
 * without authentication). Failures of authentication are
 * {@link AuthError}s that say what to do; anything else (a server's other
 * Rlerrors, a dead connection) is passed on as it came.
 */
export async function authenticatedAttach(
  session: Session,
  request: AttachRequest,
  policy?: AuthPolicy,
): Promise<{ fid: number; qid: Qid }> {
  const { uname, aname, nUname } = request;
  if (!policy || policy.mode === "none") {
    try {
      return await session.attach(uname, aname, nUname);
    } catch (err) {
      if (policy && err instanceof P9Error && refused.has(err.errno)) {
        throw await explainRefusal(session, request, err);
      }
      throw err;
    }
  }
  let afid: number;
  try {
    ({ afid } = await session.auth(uname, aname, nUname));
  } catch (err) {
    if (!(err instanceof P9Error)) throw err;
    if (notRequired.has(err.errno)) {
      if (policy.mode === "auto") return await session.attach(uname, aname, nUname);
      throw new AuthError(
        `auth ${aname}: the server takes no authentication (Tauth: ${
          errnoName(err.errno)?.name
        }); ` +
          `--auth munge requires it (use --auth auto)`,
        { cause: err },
      );
    }
    throw new AuthError(
      `auth ${aname}: the server refused to start authentication for uid ${nUname} ` +
        `(Tauth: ${errnoName(err.errno)?.name})`,
      { cause: err },
    );
  }
  try {
    const credentialUid = policy.credentialUid ?? Deno.uid() ?? 0;
    if (nUname !== credentialUid) {
      throw new AuthError(
        `attach ${aname}: MUNGE vouches for uid ${credentialUid} (this process), ` +
          `so it cannot authenticate uid ${nUname} (--uid)`,
      );
    }
    let credential: string;
    try {
      credential = await policy.credentials.encode();
    } catch (err) {
      if (!(err instanceof AuthError)) throw err;
      throw new AuthError(
        `attach ${aname}: the server requires MUNGE authentication, but ${err.message}`,
        { cause: err },
      );
    }
    await writeCredential(session, afid, new TextEncoder().encode(credential));
    try {
      return await session.attach(uname, aname, nUname, afid);
    } catch (err) {
      if (!(err instanceof P9Error) || !refused.has(err.errno)) throw err;
      throw new AuthError(
        `attach ${aname}: the server refused our MUNGE credential (${
          errnoName(err.errno)?.name
        }: expired or replayed, munged keys that differ, or uid ${nUname} not allowed)`,
        { cause: err },
      );
    }
  } finally {
    // Not awaited: the attach holds what the afid proved, and the session's
    // next requests need not wait for this one.
    if (!session.closed) session.clunk(afid).catch(() => {});
  }
}

/** Write all of `credential` into `afid` from offset 0. */
async function writeCredential(session: Session, afid: number, credential: Uint8Array) {
  for (let done = 0; done < credential.length;) {
    const end = Math.min(credential.length, done + session.maxPayload);
    const n = await session.write(afid, done, credential.subarray(done, end));
    if (n === 0) throw new ProtocolError("auth: the server took none of the credential");
    done += n;
  }
}

/**
 * An attach without authentication was refused: if the server asks for
 * authentication (Tauth succeeds), say so; otherwise the refusal stands.
 */
async function explainRefusal(
  session: Session,
  request: AttachRequest,
  refusal: P9Error,
): Promise<Error> {
  let afid: number;
  try {
    ({ afid } = await session.auth(request.uname, request.aname, request.nUname));
  } catch {
    return refusal;
  }
  session.clunk(afid).catch(() => {});
  return new AuthError(
    `attach ${request.aname}: the server requires authentication (${refusal.code}), ` +
      `and --auth none was given (use --auth auto or munge)`,
    { cause: refusal },
  );
}
