/**
 * A block backend that survives its servers: reconnect, per-request retry,
 * verified failover between replicas, and a write log that makes FLUSH mean
 * "durable on the server that holds the data" even across a reconnect.
 *
 * Which file decides what:
 * - `resilient.ts`: what happens to a request when its server fails
 *   (re-issued, or failed after the give-up deadline); {@link ResilientImage}
 *   composes the others.
 * - `replicas.ts`: which replica serves, and when that changes (attach,
 *   reconnect order, backoff and flaps, failback); the counters.
 * - `identity.ts`: whether a session holds the attached image (size,
 *   sampled fingerprint, optional full SHA-256).
 * - `write_log.ts`: which writes a new session must replay, and when a
 *   background FLUSH bounds the log.
 *
 * @module
 */

export { fullSha256, type Identity, IdentityError, identityOf, sampleOffsets } from "./identity.ts";
export { ResilientImage, type ResilientOptions } from "./resilient.ts";
