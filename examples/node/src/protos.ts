// The service's .proto files, loaded at run time with @grpc/proto-loader:
// every method they define, with serializers that take and give plain
// objects (the JSON mapping of the messages). No generated code.
import { readdirSync } from "node:fs";
import { join, relative, resolve } from "node:path";
import * as protoLoader from "@grpc/proto-loader";
import type { Method } from "./calls";

/** The repository's proto/ directory, next to examples/. */
export const PROTO_DIR = resolve(__dirname, "..", "..", "..", "..", "proto");

/** Every .proto file under dir, relative to it. */
function protoFiles(dir: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((f) => f.endsWith(".proto"))
    .map((f) => relative(dir, join(dir, f)))
    .sort();
}

/** Every method of the .proto files under dir, by path ("/pkg.Service/Method"). */
export function loadMethods(dir: string = PROTO_DIR): Map<string, Method<object, object>> {
  const files = protoFiles(dir);
  if (files.length === 0) throw new Error(`no .proto file under ${dir}`);
  const definition = protoLoader.loadSync(files, {
    includeDirs: [dir],
    // Objects as the proto3 JSON mapping spells them: lowerCamelCase
    // fields, 64-bit integers and enums as strings.
    longs: String,
    enums: String,
    bytes: String,
    oneofs: true,
  });
  const methods = new Map<string, Method<object, object>>();
  for (const value of Object.values(definition)) {
    if ("format" in value) continue; // a message or enum type, not a service
    for (const m of Object.values(value as protoLoader.ServiceDefinition)) {
      methods.set(m.path, {
        path: m.path,
        requestStream: m.requestStream,
        responseStream: m.responseStream,
        serialize: m.requestSerialize as (request: object) => Buffer,
        deserialize: m.responseDeserialize as (bytes: Buffer) => object,
      });
    }
  }
  return methods;
}
