/**
 * The narrow interface between a block-device front end (the NBD engine that
 * answers the kernel or an NBD client) and whatever stores the bytes (a 9P
 * image, possibly with failover, or an in-memory fake in tests).
 *
 * Offsets and lengths are plain numbers: images up to 2^53 bytes (8 PiB).
 *
 * ## What a backend throws
 *
 * A request that fails rejects with one of these (`lib/errors.ts`), and the
 * NBD boundary turns it into the reply's error with `nbdErrorFor`
 * (`lib/nbd/wire.ts`), the one place that decides:
 *
 * - `ErrnoError`: the request failed with that errno, and that is the
 *   answer (retrying will not change it). A server's Rlerror arrives as its
 *   subclass `P9Error`; a refusal decided here (a write to a read-only
 *   image: EROFS) is a plain `ErrnoError`. The client gets the NBD error of
 *   the same meaning (EPERM for EPERM/EACCES/EROFS; ENOSPC for
 *   ENOSPC/EDQUOT/EFBIG; EINVAL, ENOMEM, EOVERFLOW, EOPNOTSUPP, ESHUTDOWN,
 *   EIO as themselves) and EIO for any other errno.
 * - `ConnectionError` (`TimeoutError` included): no server could serve the
 *   request. A backend that reconnects or fails over retries these itself
 *   and throws one only when it gives up (`--give-up-after`). EIO.
 * - Anything else (`ProtocolError` from a server that broke 9P, a
 *   `RangeError` for a request outside the image, a bug): EIO.
 *
 * A failed request never ends the connection it came on. After a failed
 * `read`, `dest` may hold part of the data, and a request that was given up
 * on may still write into `dest` later: the caller must not reuse it.
 *
 * @module
 */

/** Storage a block device can be served from. */
export interface BlockBackend {
  /** Size of the image in bytes; no byte at or beyond it is ever requested. */
  readonly sizeBytes: number;
  /** True when writes must be refused. */
  readonly readOnly: boolean;
  /** Fill all of `dest` with the bytes at `offset` (offset + dest.length ≤ sizeBytes). */
  read(offset: number, dest: Uint8Array): Promise<void>;
  /** Write all of `data` at `offset`; resolves when the server has accepted it. */
  write(offset: number, data: Uint8Array): Promise<void>;
  /** Make every write acknowledged so far durable. */
  flush(): Promise<void>;
}
