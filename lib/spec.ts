/**
 * The SPEC that names an image on a 9P server.
 *
 * ```text
 * SPEC    = SERVER ":" ANAME [ "//" PATH ]
 * SERVER  = HOST | HOST ":" PORT | "[" IPV6 "]" [ ":" PORT ] | "unix:" SOCKET
 * ```
 *
 * - `host:/srv/img`: attach with aname `/srv/img` on port 564 (diod exports
 *   image files this way; the attach fid is the file itself).
 * - `host:5640:/srv/img`, `[::1]:/srv/img`, `[fe80::1]:5640:/srv/img`.
 * - `unix:/run/9p.sock:/srv/img`: a Unix socket.
 * - `host:/export//dir/img`: attach to the export `/export`, then walk
 *   `dir/img` (servers that export directories, such as nfs-ganesha).
 *
 * @module
 */

import { UsageError } from "./errors.ts";
import { type Address, DEFAULT_PORT, formatAddress } from "./p9/transport.ts";

/** A parsed SPEC. */
export interface Spec {
  address: Address;
  /** The attach name. */
  aname: string;
  /** Names walked from the attach point to the image; empty when aname is the image. */
  walk: string[];
  /** The SPEC as the user wrote it, for messages. */
  text: string;
}

/** The accepted forms, shown with every SPEC error. */
export const SPEC_FORMS = "HOST[:PORT]:/PATH, [IPV6][:PORT]:/PATH, unix:SOCKET:/PATH, " +
  "or ...:/EXPORT//FILE to walk from an exported directory";

const hostPattern = /^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/;

function specError(text: string, why: string): UsageError {
  return new UsageError(`bad SPEC "${text}": ${why} (expected ${SPEC_FORMS})`);
}

function parsePort(text: string, port: string): number {
  if (!/^[0-9]{1,5}$/.test(port) || Number(port) < 1 || Number(port) > 65535) {
    throw specError(text, `port "${port}" is not a number from 1 to 65535`);
  }
  return Number(port);
}

/** Parse a SPEC; a malformed one raises {@link UsageError} naming the accepted forms. */
export function parseSpec(text: string): Spec {
  let address: Address;
  let rest: string;
  if (text.startsWith("unix:")) {
    const split = text.indexOf(":/", "unix:".length + 1);
    if (split < 0 || !text.startsWith("/", "unix:".length)) {
      throw specError(text, "a Unix socket needs an absolute socket path and an image path");
    }
    address = { kind: "unix", path: text.slice("unix:".length, split) };
    rest = text.slice(split + 1);
  } else if (text.startsWith("[")) {
    const close = text.indexOf("]");
    if (close < 0) throw specError(text, "unclosed [ in IPv6 address");
    const host = text.slice(1, close);
    if (!/^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?$/.test(host) || !host.includes(":")) {
      throw specError(text, `"${host}" is not an IPv6 address`);
    }
    let after = text.slice(close + 1);
    if (!after.startsWith(":")) throw specError(text, "missing :/PATH after the address");
    after = after.slice(1);
    let port = DEFAULT_PORT;
    if (!after.startsWith("/")) {
      const colon = after.indexOf(":");
      if (colon < 0) throw specError(text, "missing :/PATH after the port");
      port = parsePort(text, after.slice(0, colon));
      after = after.slice(colon + 1);
    }
    address = { kind: "tcp", host, port };
    rest = after;
  } else {
    const server = text.includes(":/") ? text.slice(0, text.indexOf(":/")) : text;
    if (/^[0-9A-Fa-f:]+$/.test(server) && (server.match(/:/g) ?? []).length >= 2) {
      throw specError(text, "write IPv6 addresses in brackets, as in [::1]:/PATH");
    }
    const first = text.indexOf(":");
    if (first < 0) {
      throw specError(text, text ? "missing :/PATH after the server" : "empty SPEC");
    }
    const host = text.slice(0, first);
    if (!hostPattern.test(host)) {
      throw specError(
        text,
        host.length === 0 ? "no server given" : `"${host}" is not a host name or address` +
          (text.split(":").length > 3 ? " (write IPv6 addresses in brackets)" : ""),
      );
    }
    let after = text.slice(first + 1);
    let port = DEFAULT_PORT;
    if (!after.startsWith("/")) {
      const colon = after.indexOf(":");
      if (colon < 0) throw specError(text, "the image path must be absolute");
      port = parsePort(text, after.slice(0, colon));
      after = after.slice(colon + 1);
    }
    address = { kind: "tcp", host, port };
    rest = after;
  }
  if (!rest.startsWith("/")) throw specError(text, "the image path must be absolute");
  const split = rest.indexOf("//");
  const aname = split < 0 ? rest : rest.slice(0, split) || "/";
  const walk = split < 0 ? [] : rest.slice(split + 2).split("/").filter((n) => n !== "");
  if (split >= 0 && walk.length === 0) throw specError(text, "nothing to walk to after //");
  for (const name of walk) {
    if (name === "." || name === "..") throw specError(text, `"${name}" is not allowed in a path`);
  }
  if (aname.includes("\0") || walk.some((n) => n.includes("\0"))) {
    throw specError(text, "NUL byte in path");
  }
  return { address, aname, walk, text };
}

/** The SPEC written back in its canonical form. */
export function formatSpec(spec: Spec): string {
  const server = spec.address.kind === "tcp" && spec.address.port === DEFAULT_PORT
    ? formatAddress(spec.address).replace(/:564$/, "")
    : formatAddress(spec.address);
  return `${server}:${spec.aname}${spec.walk.length ? `//${spec.walk.join("/")}` : ""}`;
}
