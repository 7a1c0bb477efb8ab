// Interop: the TypeScript client (@grpc/grpc-js) against the real Rust
// server over mutual TLS. Nothing here names the service's RPCs or
// messages:
// - every case of the policy's case file is called over the wire, as the
//   identity it names, with an empty request message in the method's own
//   shape (from `server methods --json`): a case that says deny must get
//   PERMISSION_DENIED, one that says allow anything else;
// - the TLS checks use the health service, which every server runs.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { after, before, test } from "node:test";
import { Client, Metadata, status } from "@grpc/grpc-js";
import { call, codeName, rawMethod, shapeName } from "../src/calls";
import * as health from "../src/health";
import { channel, probe, type MtlsOptions } from "../src/mtls";
import {
  allowedIdentity,
  anyIdentity,
  CASES_FILE,
  clientCert,
  HEALTH_CHECK,
  loadCases,
  ownServices,
  parseHeaders,
  servedMethods,
} from "./cases";
import { makePki, startServer, type RunningServer } from "./server";

/** Deadline of each case's call: a streaming handler that waits for more
 * (a watch, say) ends with DEADLINE_EXCEEDED, which is not a denial. */
const CASE_DEADLINE_MS = 5_000;

let server: RunningServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

function options(id: { cert: string; key: string }): MtlsOptions {
  return { addr: server.addr, serverName: "localhost", ...id, ca: join(server.certs, "ca.pem") };
}

function connect(o: MtlsOptions): Client {
  const { creds, options: channelOptions } = channel(o);
  return new Client(o.addr, creds, channelOptions);
}

const deadline = (ms = 10_000) => new Date(Date.now() + ms);

/** An identity a case allows the health check, else any client of the PKI. */
function healthIdentity() {
  return allowedIdentity(loadCases(), HEALTH_CHECK, server.certs) ?? anyIdentity(server.certs);
}

test("policy cases, over the wire", async (t) => {
  const cases = loadCases();
  const methods = servedMethods();
  let ran = 0;
  const skipped: string[] = [];
  for (const c of cases) {
    await t.test(c.name, async (t) => {
      assert.equal(c.error, undefined, `malformed case: ${c.error}`);
      const m = methods.get(c.method);
      assert.ok(m, `${c.method} is not served (not in \`server methods --json\`)`);
      const id = clientCert(c, server.certs);
      if (typeof id === "string") {
        skipped.push(c.name);
        t.skip(id);
        return;
      }
      const client = connect(options(id));
      try {
        if (c.cert !== undefined) {
          // A certificate from outside the test's PKI: unless the server
          // accepts it, nothing can be proved with it.
          const unary = { requestStream: false, responseStream: false };
          const probe = await call(client, rawMethod(HEALTH_CHECK, unary), [Buffer.alloc(0)], new Metadata(), {
            deadline: deadline(CASE_DEADLINE_MS),
          });
          if (probe.code === status.UNAVAILABLE) {
            skipped.push(c.name);
            t.skip(`the server refuses ${c.cert} (not issued by the test PKI's CA?): ${probe.details}`);
            return;
          }
        }
        const metadata = new Metadata();
        for (const [k, v] of parseHeaders(c.headers)) metadata.add(k, v);
        const outcome = await call(client, rawMethod(c.method, m), [Buffer.alloc(0)], metadata, {
          deadline: deadline(CASE_DEADLINE_MS),
        });
        ran++;
        const where = `${shapeName(m)} ${c.method} as ${basename(id.cert)}`;
        if (c.expect === "deny") {
          assert.equal(codeName(outcome.code), "PERMISSION_DENIED", `${where}: want PERMISSION_DENIED, got ${codeName(outcome.code)}: ${outcome.details}`);
        } else {
          assert.notEqual(codeName(outcome.code), "PERMISSION_DENIED", `${where}: want allowed, got PERMISSION_DENIED: ${outcome.details}`);
        }
        t.diagnostic(`${where}: ${codeName(outcome.code)}`);
      } finally {
        client.close();
      }
    });
  }
  t.diagnostic(`${ran} of the ${cases.length} cases of ${CASES_FILE} ran over the wire, ${skipped.length} skipped`);
  assert.ok(ran > 0, `none of the ${cases.length} cases of ${CASES_FILE} ran over the wire (${skipped.length} skipped)`);
});

test("a certificate from another CA is refused", async () => {
  const tmp = mkdtempSync(join(tmpdir(), "node-foreign-"));
  try {
    const foreign = makePki(join(tmp, "other"));
    // Trusts the real server, but presents a certificate its CA never issued.
    const client = connect(options(anyIdentity(foreign)));
    try {
      await assert.rejects(health.check(client, "", deadline()), { code: status.UNAVAILABLE });
    } finally {
      client.close();
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test("the wrong server name is refused", async () => {
  const client = connect({ ...options(healthIdentity()), serverName: "not-the-server.example.org" });
  try {
    await assert.rejects(health.check(client, "", deadline()), (e: { code: number; details: string }) => {
      assert.equal(e.code, status.UNAVAILABLE);
      assert.match(e.details, /ERR_TLS_CERT_ALTNAME_INVALID/);
      return true;
    });
  } finally {
    client.close();
  }
});

test("health reports SERVING for the server and each of its services", async (t) => {
  const id = allowedIdentity(loadCases(), HEALTH_CHECK, server.certs);
  if (!id) {
    t.skip(`no case of ${CASES_FILE} allows ${HEALTH_CHECK} to an identity of the test PKI`);
    return;
  }
  const client = connect(options(id));
  try {
    for (const service of ["", ...ownServices(servedMethods())]) {
      assert.equal(await health.check(client, service, deadline()), "SERVING", `health of ${JSON.stringify(service)}`);
    }
  } finally {
    client.close();
  }
});

test("negotiates TLS 1.3 with ALPN h2", async (t) => {
  // grpc-js keeps its socket to itself: probe with the same settings.
  const n = await probe(options(healthIdentity()));
  assert.equal(n.protocol, "TLSv1.3");
  assert.equal(n.alpn, "h2");
  // Node 20's OpenSSL 3.0 offers X25519 first with a key share; newer
  // OpenSSL (3.5+) also offers X25519MLKEM768.
  assert.ok(n.group === "X25519" || n.group === "X25519MLKEM768", `key exchange group ${n.group}`);
  t.diagnostic(`negotiated ${n.protocol}, ALPN ${n.alpn}, ${n.cipher}, key exchange ${n.group}`);
});
