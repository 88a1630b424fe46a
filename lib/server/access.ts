/**
 * Who may talk to `9nbd export`: `--allow CIDR` ranges (IPv4 and IPv6) and
 * `--privport` (only clients whose source port is below 1024, as diod's
 * `privport` option). Pure functions: no I/O.
 *
 * @module
 */

import { UsageError } from "../errors.ts";

/** One address range: family, network bits and prefix length. */
export interface Cidr {
  family: 4 | 6;
  /** The network address as a 32- or 128-bit number. */
  network: bigint;
  prefixBits: number;
  /** As written, for logs. */
  text: string;
}

/** A client address as the listener reports it. */
export interface Peer {
  /** `127.0.0.1`, `::1`, `::ffff:10.0.0.1`; undefined for a Unix socket. */
  host?: string;
  port?: number;
}

/** The first port an unprivileged process cannot bind. */
export const PRIVILEGED_PORT_LIMIT = 1024;

/** `10.1.2.3` → its 32-bit value, or undefined when `text` is not a dotted quad. */
export function parseIpv4(text: string): bigint | undefined {
  const parts = text.split(".");
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const part of parts) {
    if (!/^[0-9]{1,3}$/.test(part) || Number(part) > 255) return undefined;
    value = (value << 8n) | BigInt(Number(part));
  }
  return value;
}

/** `fe80::1`, `::ffff:1.2.3.4` → its 128-bit value, or undefined when not an IPv6 address. */
export function parseIpv6(text: string): bigint | undefined {
  const zone = text.indexOf("%");
  if (zone >= 0) text = text.slice(0, zone);
  let words: number[] = [];
  // An embedded IPv4 tail (::ffff:1.2.3.4) is two words.
  const lastColon = text.lastIndexOf(":");
  if (lastColon >= 0 && text.slice(lastColon + 1).includes(".")) {
    const v4 = parseIpv4(text.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    text = `${text.slice(0, lastColon + 1)}${(v4 >> 16n).toString(16)}:${
      (v4 & 0xffffn).toString(16)
    }`;
  }
  const halves = text.split("::");
  if (halves.length > 2) return undefined;
  const parse = (half: string): number[] | undefined => {
    if (half === "") return [];
    const out: number[] = [];
    for (const word of half.split(":")) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(word)) return undefined;
      out.push(parseInt(word, 16));
    }
    return out;
  };
  const head = parse(halves[0]);
  const tail = halves.length === 2 ? parse(halves[1]) : [];
  if (head === undefined || tail === undefined) return undefined;
  if (halves.length === 2) {
    if (head.length + tail.length > 7) return undefined;
    words = [...head, ...new Array(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    if (head.length !== 8) return undefined;
    words = head;
  }
  let value = 0n;
  for (const word of words) value = (value << 16n) | BigInt(word);
  return value;
}

/** Parse `10.0.0.0/8`, `::1/128`, or a bare address (a single host). */
export function parseCidr(text: string): Cidr {
  const slash = text.indexOf("/");
  const addressText = slash < 0 ? text : text.slice(0, slash);
  const v4 = parseIpv4(addressText);
  const v6 = v4 === undefined ? parseIpv6(addressText) : undefined;
  if (v4 === undefined && v6 === undefined) {
    throw new UsageError(`--allow: "${text}" is not an address range (e.g. 10.0.0.0/8, fd00::/8)`);
  }
  const family = v4 !== undefined ? 4 : 6;
  const bits = family === 4 ? 32 : 128;
  const prefixText = slash < 0 ? String(bits) : text.slice(slash + 1);
  if (!/^[0-9]{1,3}$/.test(prefixText) || Number(prefixText) > bits) {
    throw new UsageError(`--allow: "${text}" has a prefix length outside 0..${bits}`);
  }
  const prefixBits = Number(prefixText);
  const network = (v4 ?? v6!) & maskOf(bits, prefixBits);
  return { family, network, prefixBits, text };
}

function maskOf(bits: number, prefixBits: number): bigint {
  const all = (1n << BigInt(bits)) - 1n;
  return all ^ ((1n << BigInt(bits - prefixBits)) - 1n);
}

/** A client address as family and value; IPv4-mapped IPv6 (::ffff:a.b.c.d) counts as IPv4. */
function addressOf(host: string): { family: 4 | 6; value: bigint } | undefined {
  const v4 = parseIpv4(host);
  if (v4 !== undefined) return { family: 4, value: v4 };
  const v6 = parseIpv6(host);
  if (v6 === undefined) return undefined;
  if (v6 >> 32n === 0xffffn) return { family: 4, value: v6 & 0xffffffffn };
  return { family: 6, value: v6 };
}

/** True when `host` lies inside `cidr`. */
export function cidrContains(cidr: Cidr, host: string): boolean {
  const address = addressOf(host);
  if (!address || address.family !== cidr.family) return false;
  const bits = cidr.family === 4 ? 32 : 128;
  return (address.value & maskOf(bits, cidr.prefixBits)) === cidr.network;
}

/**
 * True when `host` (a listening address) reaches this machine only:
 * `localhost`, 127.0.0.0/8, ::1 (or ::ffff:127.x.y.z).
 */
export function isLoopback(host: string): boolean {
  if (host === "localhost") return true;
  const address = addressOf(host);
  if (!address) return false;
  return address.family === 4 ? address.value >> 24n === 127n : address.value === 1n;
}

/** Who may connect. An empty `allow` list allows every address. */
export interface AccessPolicy {
  allow: Cidr[];
  privilegedPortOnly: boolean;
}

/**
 * Why `peer` may not connect, or null when it may. Unix-socket clients (no
 * host) are governed by the socket file's permissions, not by this policy.
 */
export function refusal(policy: AccessPolicy, peer: Peer): string | null {
  if (peer.host === undefined) return null;
  if (policy.allow.length > 0 && !policy.allow.some((c) => cidrContains(c, peer.host!))) {
    return `${peer.host} is outside every --allow range`;
  }
  if (policy.privilegedPortOnly && (peer.port ?? 0) >= PRIVILEGED_PORT_LIMIT) {
    return `source port ${peer.port} is not privileged (--privport)`;
  }
  return null;
}
