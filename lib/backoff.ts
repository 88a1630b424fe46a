/**
 * Reconnect delays: short at first, growing exponentially to a cap, with
 * "full jitter" so a thousand clients that lost the same server do not all
 * knock on its door in the same millisecond when it returns. Pure.
 *
 * @module
 */

/** Backoff parameters. */
export interface BackoffPolicy {
  /** First delay (before jitter). */
  initialMs: number;
  /** Largest delay. */
  maxMs: number;
  /** Growth per attempt. */
  factor: number;
}

/** Defaults: 50 ms doubling to 2 s, so a returning server is noticed within ~2 s. */
export const defaultBackoff: BackoffPolicy = { initialMs: 50, maxMs: 2000, factor: 2 };

/**
 * Delay before reconnect attempt `attempt` (0-based): uniformly random in
 * [ceiling/2, ceiling], where ceiling = min(maxMs, initialMs · factor^attempt).
 * Half the ceiling is kept fixed so the delay never collapses to zero.
 */
export function backoffDelayMs(
  attempt: number,
  policy: BackoffPolicy = defaultBackoff,
  random: () => number = Math.random,
): number {
  const ceiling = Math.min(policy.maxMs, policy.initialMs * policy.factor ** Math.max(0, attempt));
  return ceiling / 2 + random() * (ceiling / 2);
}
