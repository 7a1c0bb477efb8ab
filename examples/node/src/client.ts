#!/usr/bin/env node
// Calls the inventory service over mutual TLS from TypeScript (@grpc/grpc-js).
//
// From the repository root, with the server running:
//
//   node examples/node/dist/src/client.js --identity writer put apple-1 Apple 3
//   node examples/node/dist/src/client.js --identity reader get apple-1
//   node examples/node/dist/src/client.js --identity reader purge    # PERMISSION_DENIED, exit 1
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Metadata } from "@grpc/grpc-js";
import * as inventory from "./inventory/v1/inventory";
import { codeName, isServiceError, unary } from "./calls";
import * as health from "./health";
import { channel, probe, type MtlsOptions } from "./mtls";

const USAGE = `usage: client [options] COMMAND [ARGS]

commands:
  get SKU                      GetItem (read)
  put SKU NAME QUANTITY        PutItem (write)
  purge                        Purge (admin)
  list [--prefix P]            ListItems (server streaming)
  import SKU,NAME,QTY...       ImportItems (client streaming)
  health [--service S]         grpc.health.v1 Check; exit 0 only if SERVING
  handshake                    health, then the TLS parameters a handshake negotiates

options:
  --addr HOST:PORT       default 127.0.0.1:50051
  --server-name NAME     the name the server certificate must carry (default localhost)
  --certs DIR            the development PKI (default certs)
  --identity NAME        use CERTS/NAME.pem and CERTS/NAME.key (default reader)
  --cert FILE --key FILE client certificate and key; override --identity
  --ca FILE              CA bundle the server must chain to (default CERTS/ca.pem)
  --timeout SECONDS      default 10
`;

function show(item: inventory.Item): void {
  console.log(`sku=${item.sku} name=${JSON.stringify(item.name)} quantity=${item.quantity} updated_by=${item.updatedBy}`);
}

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
      timeout: { type: "string", default: "10" },
      prefix: { type: "string", default: "" },
      service: { type: "string", default: "" },
      help: { type: "boolean", short: "h" },
    },
  });
  const [command, ...args] = positionals;
  if (o.help || !command) {
    process.stderr.write(USAGE);
    return 2;
  }
  const tlsOptions: MtlsOptions = {
    addr: o.addr!,
    serverName: o["server-name"]!,
    cert: o.cert ?? join(o.certs!, `${o.identity}.pem`),
    key: o.key ?? join(o.certs!, `${o.identity}.key`),
    ca: o.ca ?? join(o.certs!, "ca.pem"),
  };
  const { creds, options } = channel(tlsOptions);
  const client = new inventory.InventoryClient(tlsOptions.addr, creds, options);
  const deadline = new Date(Date.now() + Number(o.timeout) * 1000);
  try {
    switch (command) {
      case "get":
        show(await unary(client.getItem.bind(client), { sku: args[0] ?? "" }, deadline));
        break;
      case "put": {
        const [sku, name, quantity] = args;
        if (quantity === undefined || !/^-?\d+$/.test(quantity)) throw new Error("put SKU NAME QUANTITY");
        show(await unary(client.putItem.bind(client), { item: { sku, name, quantity: Number(quantity), updatedBy: "" } }, deadline));
        break;
      }
      case "purge":
        console.log(`removed=${(await unary(client.purge.bind(client), {}, deadline)).removed}`);
        break;
      case "list":
        for await (const item of client.listItems({ skuPrefix: o.prefix! }, new Metadata(), { deadline })) {
          show(item as inventory.Item);
        }
        break;
      case "import": {
        const items = args.map((raw) => {
          const [sku, name, quantity] = raw.split(",");
          if (quantity === undefined || !/^-?\d+$/.test(quantity)) throw new Error(`${raw}: expected SKU,NAME,QUANTITY`);
          return { sku, name, quantity: Number(quantity), updatedBy: "" };
        });
        const summary = await new Promise<inventory.ImportSummary>((resolve, reject) => {
          const stream = client.importItems(new Metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
          for (const item of items) stream.write({ item });
          stream.end();
        });
        console.log(`imported=${summary.imported}`);
        break;
      }
      case "health":
      case "handshake": {
        const serving = await health.check(client, o.service!, deadline);
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
  return 0;
}

run(process.argv.slice(2)).then((code) => process.exit(code));
