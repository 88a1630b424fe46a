/**
 * `9nbd export --auth munge`: the server side of diod's MUNGE scheme (see
 * lib/p9/auth.ts for the exchange), with diod's rules (src/libdiod/diod_auth.c,
 * src/libnpfs/fcall.c):
 *
 * - Tauth makes an authentication fid for the uid the request names in
 *   n_uname. A numeric uid is required: this server has no user database
 *   to look a user name up in.
 * - The client writes its credential into that fid, from offset 0, in order.
 * - Tattach naming the fid is admitted when it names the same uid, munged
 *   decodes the credential (valid, same key, not expired, not replayed) and
 *   the credential vouches for that uid. The connection is then
 *   authenticated as that uid.
 * - Tattach with afid NOFID is admitted only on an authenticated connection,
 *   authenticated as root (which may then attach as anyone) or as the same uid.
 *
 * Everything else is refused with EPERM, and the reason is logged. The uid
 * decides admission only: files are served with the server's own rights.
 *
 * @module
 */

import { Errno } from "../errno.ts";
import { AuthError, P9Error } from "../errors.ts";
import { logger } from "../log.ts";
import type { Message, MsgType } from "../p9/wire.ts";
import { NOFID, NONUNAME } from "../p9/wire.ts";
import { AuthFid, type FidTable } from "./fids.ts";

const log = logger("server");

/** Longest credential accepted: MUNGE's with an empty payload is about 130 bytes. */
export const MAX_CREDENTIAL_BYTES = 8192;

/** What the server needs of MUNGE: decoding (lib/kernel/munge.ts, or a fake in tests). */
export interface CredentialDecoder {
  /** The uid (and gid) `credential` vouches for; an {@link AuthError} when munged refuses it. */
  decode(credential: string): Promise<{ uid: number; gid: number }>;
}

/** The part of a connection that authentication reads and changes. */
export interface AuthContext {
  fids: FidTable;
  /** How logs name the client. */
  label: string;
  /** The uid this connection authenticated as, once an attach was authenticated. */
  authenticatedUid?: number;
}

/** The MUNGE policy of one export server. */
export class ServerAuth {
  constructor(readonly decoder: CredentialDecoder) {}

  /** Tauth: a new authentication fid for the uid in n_uname. */
  start(ctx: AuthContext, msg: Message<typeof MsgType.Tauth>): void {
    if (msg.nUname === NONUNAME) {
      throw this.#refuse(ctx, `auth ${msg.aname}`, "no numeric uid (n_uname) given");
    }
    if (msg.afid === NOFID) throw new P9Error(Errno.EINVAL, "auth: afid is NOFID");
    ctx.fids.add(msg.afid, new AuthFid(msg.nUname, MAX_CREDENTIAL_BYTES), "auth");
  }

  /** Tattach: admit it or throw EPERM (see the module comment for the rules). */
  async admit(ctx: AuthContext, msg: Message<typeof MsgType.Tattach>): Promise<void> {
    const { aname, nUname } = msg;
    if (msg.afid === NOFID) {
      const uid = ctx.authenticatedUid;
      if (uid === undefined) {
        throw this.#refuse(ctx, `attach ${aname}`, "attach without authentication");
      }
      if (uid !== 0 && uid !== nUname) {
        throw this.#refuse(
          ctx,
          `attach ${aname}`,
          `uid ${nUname} on a connection authenticated as ${uid}`,
        );
      }
      return;
    }
    const afid = ctx.fids.getAuth(msg.afid);
    if (!afid) {
      throw this.#refuse(ctx, `attach ${aname}`, `afid ${msg.afid} is not an authentication fid`);
    }
    if (afid.nUname !== nUname) {
      throw this.#refuse(
        ctx,
        `attach ${aname}`,
        `afid is for uid ${afid.nUname}, the attach for ${nUname}`,
      );
    }
    const credential = afid.credential();
    if (credential === "") throw this.#refuse(ctx, `attach ${aname}`, "no credential was written");
    let uid: number;
    try {
      ({ uid } = await this.decoder.decode(credential));
    } catch (err) {
      if (!(err instanceof AuthError)) throw err;
      throw this.#refuse(ctx, `attach ${aname}`, `MUNGE credential refused: ${err.message}`);
    }
    if (uid !== nUname) {
      throw this.#refuse(
        ctx,
        `attach ${aname}`,
        `the credential vouches for uid ${uid}, not ${nUname}`,
      );
    }
    ctx.authenticatedUid = uid;
  }

  #refuse(ctx: AuthContext, operation: string, why: string): P9Error {
    log.warn(`${ctx.label}: refused ${operation}: ${why}`);
    return new P9Error(Errno.EPERM, `${operation}: ${why}`);
  }
}
