#!/usr/bin/env node
// Calls any method of a gRPC server over mutual TLS from TypeScript
// (@grpc/grpc-js), with JSON requests and no generated code: the messages
// come from the service's .proto files, loaded at run time by
// @grpc/proto-loader, and the call takes the method's own shape.
//
// From the repository root, with the server running:
//
//   node examples/node/dist/src/client.js methods
//   node examples/node/dist/src/client.js --identity reader call /PACKAGE.SERVICE/METHOD '{"field": "value"}'
//   node examples/node/dist/src/client.js --identity reader health
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Client, Metadata } from "@grpc/grpc-js";
import { call, codeName, isServiceError, shapeName } from "./calls";
import * as health from "./health";
import { channel, probe, type MtlsOptions } from "./mtls";
import { loadMethods, PROTO_DIR } from "./protos";

const USAGE = `usage: client [options] COMMAND [ARGS]

commands:
  call METHOD [JSON...]  call /PACKAGE.SERVICE/METHOD with JSON requests (default one {};
                         several for a client-streaming method); prints each reply as JSON
  methods                list the methods of the .proto files
  health [--service S]   grpc.health.v1 Check; exit 0 only if SERVING
  handshake              health, then the TLS parameters a handshake negotiates

options:
  --addr HOST:PORT       default 127.0.0.1:50051
  --server-name NAME     the name the server certificate must carry (default localhost)
  --certs DIR            the development PKI (default certs)
  --identity NAME        use CERTS/NAME.pem and CERTS/NAME.key (default reader)
  --cert FILE --key FILE client certificate and key; override --identity
  --ca FILE              CA bundle the server must chain to (default CERTS/ca.pem)
  --proto-dir DIR        the .proto files (default the repository's proto/)
  --header 'KEY: VALUE'  request metadata (repeatable)
  --timeout SECONDS      default 10
`;

async function run(argv: string[]): Promise<number> {
  const { values: o, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      addr: { type: "string", default: "127.0.0.1:50051" },
      "server-name": { type: "string", default: "localhost" },
      certs: { type: "string", default: "certs" },
      identity: { type: "string", default: "reader" },
      cert: { type: "string" },
      key: { type: "string" },
      ca: { type: "string" },
      "proto-dir": { type: "string", default: PROTO_DIR },
      header: { type: "string", multiple: true, default: [] },
      timeout: { type: "string", default: "10" },
      service: { type: "string", default: "" },
      help: { type: "boolean", short: "h" },
    },
  });
  const [command, ...args] = positionals;
  if (o.help || !command) {
    process.stderr.write(USAGE);
    return 2;
  }
  if (command === "methods") {
    for (const m of loadMethods(o["proto-dir"]).values()) console.log(`${m.path} (${shapeName(m)})`);
    return 0;
  }
  const tlsOptions: MtlsOptions = {
    addr: o.addr!,
    serverName: o["server-name"]!,
    cert: o.cert ?? join(o.certs!, `${o.identity}.pem`),
    key: o.key ?? join(o.certs!, `${o.identity}.key`),
    ca: o.ca ?? join(o.certs!, "ca.pem"),
  };
  const metadata = new Metadata();
  for (const h of o.header!) {
    const i = h.indexOf(":");
    if (i < 0) throw new Error(`--header ${JSON.stringify(h)} is not 'key: value'`);
    metadata.add(h.slice(0, i).trim(), h.slice(i + 1).trim());
  }
  const { creds, options } = channel(tlsOptions);
  const client = new Client(tlsOptions.addr, creds, options);
  const deadline = new Date(Date.now() + Number(o.timeout) * 1000);
  try {
    switch (command) {
      case "call": {
        const [path, ...jsons] = args;
        const method = path && loadMethods(o["proto-dir"]).get(path.startsWith("/") ? path : `/${path}`);
        if (!method) throw new Error(`call METHOD [JSON...]: ${path ?? "no method"} is not in the .proto files (see: methods)`);
        const requests = (jsons.length ? jsons : ["{}"]).map((text) => JSON.parse(text) as object);
        const outcome = await call(client, method, requests, metadata, { deadline }, (reply) =>
          console.log(JSON.stringify(reply)),
        );
        if (outcome.code !== 0) {
          console.error(`error: ${codeName(outcome.code)}: ${outcome.details}`);
          return 1;
        }
        return 0;
      }
      case "health":
      case "handshake": {
        const serving = await health.check(client, o.service!, deadline, metadata);
        console.log(serving);
        if (command === "handshake") {
          const n = await probe(tlsOptions);
          console.log(`tls=${n.protocol} alpn=${n.alpn} cipher=${n.cipher} group=${n.group}`);
        }
        return serving === "SERVING" ? 0 : 1;
      }
      default:
        process.stderr.write(`unknown command ${JSON.stringify(command)}\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    if (isServiceError(e)) console.error(`error: ${codeName(e.code)}: ${e.details}`);
    else console.error(`error: ${e instanceof Error ? e.message : e}`);
    return 1;
  } finally {
    client.close();
  }
}

run(process.argv.slice(2)).then((code) => process.exit(code));
