// Calls any gRPC method with @grpc/grpc-js's generic client API, in the
// method's own shape (unary, server, client or bidi streaming), and the
// canonical name of a status code. The messages are whatever the given
// serializers make of them: raw bytes, or objects of a loaded .proto.
import { type CallOptions, type Client, type Metadata, type ServiceError, status, type StatusObject } from "@grpc/grpc-js";

/** How a method streams. */
export interface Shape {
  requestStream: boolean;
  responseStream: boolean;
}

export function shapeName(s: Shape): string {
  if (s.requestStream && s.responseStream) return "bidi streaming";
  if (s.requestStream) return "client streaming";
  if (s.responseStream) return "server streaming";
  return "unary";
}

export interface Method<Req, Res> extends Shape {
  /** "/pkg.Service/Method" */
  path: string;
  serialize: (request: Req) => Buffer;
  deserialize: (bytes: Buffer) => Res;
}

/** The status a call ended with: OK, or the server's (or grpc-js's) error. */
export type Outcome = Pick<StatusObject, "code" | "details">;

/**
 * Calls `method`: sends the requests (exactly one unless the client
 * streams), half-closes, reads the replies to the end (each to onReply),
 * and resolves with the call's final status; it never rejects for a
 * status.
 */
export function call<Req, Res>(
  client: Client,
  method: Method<Req, Res>,
  requests: Req[],
  metadata: Metadata,
  options: Partial<CallOptions>,
  onReply: (reply: Res) => void = () => {},
): Promise<Outcome> {
  if (!method.requestStream && requests.length !== 1) {
    return Promise.reject(new Error(`${method.path} is ${shapeName(method)}: it takes exactly one request`));
  }
  const { path, serialize, deserialize } = method;
  return new Promise((resolve) => {
    const done = (err: ServiceError | null, reply?: Res) => {
      if (err) return resolve({ code: err.code, details: err.details });
      if (reply !== undefined) onReply(reply);
      resolve({ code: status.OK, details: "" });
    };
    if (!method.requestStream && !method.responseStream) {
      client.makeUnaryRequest(path, serialize, deserialize, requests[0], metadata, options, done);
    } else if (!method.requestStream) {
      const stream = client.makeServerStreamRequest(path, serialize, deserialize, requests[0], metadata, options);
      stream.on("data", onReply);
      stream.on("error", () => {}); // the status below says it all
      stream.on("status", (s: StatusObject) => resolve({ code: s.code, details: s.details }));
    } else if (!method.responseStream) {
      const stream = client.makeClientStreamRequest(path, serialize, deserialize, metadata, options, done);
      for (const request of requests) stream.write(request);
      stream.end();
    } else {
      const stream = client.makeBidiStreamRequest(path, serialize, deserialize, metadata, options);
      stream.on("data", onReply);
      stream.on("error", () => {});
      stream.on("status", (s: StatusObject) => resolve({ code: s.code, details: s.details }));
      for (const request of requests) stream.write(request);
      stream.end();
    }
  });
}

/** Raw bytes in and out: with an empty buffer, the default message of any type. */
export function rawMethod(path: string, shape: Shape): Method<Buffer, Buffer> {
  const same = (b: Buffer) => b;
  return { path, ...shape, serialize: same, deserialize: same };
}

/** PERMISSION_DENIED for 7, as grpcurl and the other clients print it. */
export function codeName(code: number): string {
  return status[code] ?? String(code);
}

export function isServiceError(e: unknown): e is ServiceError {
  return typeof e === "object" && e !== null && "code" in e && "details" in e;
}
