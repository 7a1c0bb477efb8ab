// The policy's test cases, to be proved over the wire, and the methods the
// server serves. Nothing here names the service: the cases come from the
// case file (MTLS_POLICY_CASES, default config/policy.test.json), the
// methods and their shapes from `server methods --json`.
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { basename, dirname, isAbsolute, join, resolve } from "node:path";
import type { Shape } from "../src/calls";
import { BIN, ROOT } from "./server";

export const CASES_FILE = resolve(process.env.MTLS_POLICY_CASES ?? join(ROOT, "config", "policy.test.json"));
export const HEALTH_CHECK = "/grpc.health.v1.Health/Check";
/** Services every server runs besides its own. */
const KIT_SERVICES = new Set([
  "grpc.health.v1.Health",
  "grpc.reflection.v1.ServerReflection",
  "grpc.reflection.v1alpha.ServerReflection",
]);

export interface ServedMethod extends Shape {
  path: string;
  input: string;
  output: string;
}

/** Every method the server binary serves, by path. */
export function servedMethods(): Map<string, ServedMethod> {
  const out = execFileSync(join(BIN, "server"), ["methods", "--json"], { cwd: ROOT, encoding: "utf8" });
  const manifest = JSON.parse(out) as {
    methods: { path: string; client_streaming: boolean; server_streaming: boolean; input: string; output: string }[];
  };
  return new Map(
    manifest.methods.map((m) => [
      m.path,
      { path: m.path, requestStream: m.client_streaming, responseStream: m.server_streaming, input: m.input, output: m.output },
    ]),
  );
}

/** The served services but health and reflection. */
export function ownServices(methods: Map<string, ServedMethod>): string[] {
  return [...new Set([...methods.keys()].map((p) => p.split("/")[1]))].filter((s) => !KIT_SERVICES.has(s)).sort();
}

export interface PolicyCase {
  name: string;
  principals?: string[];
  /** Resolved against the case file's directory. */
  cert?: string;
  method: string;
  headers: string[];
  expect: string;
  /** What is wrong with the case, if anything. */
  error?: string;
}

/** The cases of the case file, each uniquely named for the report. */
export function loadCases(file = CASES_FILE): PolicyCase[] {
  const raw = JSON.parse(readFileSync(file, "utf8")) as { cases: Record<string, unknown>[] };
  const seen = new Map<string, number>();
  return raw.cases.map((c, i) => {
    let name = typeof c.name === "string" && c.name ? c.name : `cases[${i}] ${c.method}`;
    const n = (seen.get(name) ?? 0) + 1;
    seen.set(name, n);
    if (n > 1) name = `${name} (${n})`;
    const parsed: PolicyCase = {
      name,
      principals: c.principals as string[] | undefined,
      cert: typeof c.cert === "string" ? (isAbsolute(c.cert) ? c.cert : join(dirname(file), c.cert)) : undefined,
      method: String(c.method ?? ""),
      headers: (c.headers as string[] | undefined) ?? [],
      expect: String(c.expect),
    };
    if ((c.principals === undefined) === (c.cert === undefined)) parsed.error = "give exactly one of principals and cert";
    else if (!parsed.method) parsed.error = "no method";
    else if (parsed.expect !== "allow" && parsed.expect !== "deny") parsed.error = `expect is ${c.expect}, not allow or deny`;
    else {
      try {
        parseHeaders(parsed.headers);
      } catch (e) {
        parsed.error = (e as Error).message;
      }
    }
    return parsed;
  });
}

/**
 * "key: value" as the policy tools read it: the key trimmed and lower-cased,
 * the value without its leading spaces; a -bin value is base64, sent as the
 * bytes it encodes.
 */
export function parseHeaders(headers: string[]): [string, string | Buffer][] {
  return headers.map((h) => {
    const i = h.indexOf(":");
    if (i < 0) throw new Error(`header ${JSON.stringify(h)} is not key:value`);
    const key = h.slice(0, i).trim().toLowerCase();
    const value = h.slice(i + 1).replace(/^[ \t]+/, "");
    return [key, key.endsWith("-bin") ? Buffer.from(value, "base64") : value];
  });
}

const PRINCIPAL = /^spiffe:\/\/.+\/([A-Za-z0-9_][A-Za-z0-9._-]*)$/;

/**
 * The certificate and key of a case: a principal spiffe://ANYTHING/NAME is
 * PKI/NAME.pem and PKI/NAME.key; a `cert` is that file and the .key beside
 * it. A string says why there is none.
 */
export function clientCert(c: PolicyCase, pki: string): { cert: string; key: string } | string {
  if (c.cert !== undefined) {
    const key = c.cert.replace(/\.[^./]*$/, "") + ".key";
    if (!existsSync(c.cert)) return `${c.cert}: no such certificate`;
    if (!existsSync(key)) return `no key ${basename(key)} beside the certificate ${c.cert}`;
    return { cert: c.cert, key };
  }
  const principals = c.principals ?? [];
  const match = principals.length === 1 ? PRINCIPAL.exec(principals[0]) : null;
  if (!match) {
    return `principals ${JSON.stringify(principals)}: only one principal spiffe://.../NAME maps to a certificate of the test PKI`;
  }
  const name = match[1];
  const cert = join(pki, `${name}.pem`);
  const key = join(pki, `${name}.key`);
  if (!existsSync(cert) || !existsSync(key)) {
    return `the test PKI has no certificate for ${principals[0]} (no ${name}.pem and ${name}.key)`;
  }
  return { cert, key };
}

/** An identity of the test PKI that a case allows `method` (with no headers), if any. */
export function allowedIdentity(cases: PolicyCase[], method: string, pki: string): { cert: string; key: string } | undefined {
  for (const c of cases) {
    if (!c.error && c.cert === undefined && c.method === method && c.expect === "allow" && c.headers.length === 0) {
      const found = clientCert(c, pki);
      if (typeof found !== "string") return found;
    }
  }
  return undefined;
}

/** Some client of a PKI (not the server, not the CA). */
export function anyIdentity(pki: string): { cert: string; key: string } {
  for (const f of readdirSync(pki).sort()) {
    const name = f.replace(/\.pem$/, "");
    if (f.endsWith(".pem") && name !== "ca" && name !== "server" && existsSync(join(pki, `${name}.key`))) {
      return { cert: join(pki, f), key: join(pki, `${name}.key`) };
    }
  }
  throw new Error(`${pki}: no client certificate with its key`);
}
