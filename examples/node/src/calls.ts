// Promise wrappers over the callback style of grpc-js unary and
// client-streaming calls, and the canonical name of a status code.
import { type CallOptions, Metadata, type ServiceError, status } from "@grpc/grpc-js";

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

/** Calls a unary method of a generated client, e.g. unary(client.getItem.bind(client), req, deadline). */
export function unary<Req, Res>(
  method: (req: Req, meta: Metadata, options: Partial<CallOptions>, cb: Callback<Res>) => unknown,
  request: Req,
  deadline: Date,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    method(request, new Metadata(), { deadline }, (err, res) => (err ? reject(err) : resolve(res))),
  );
}

/** PERMISSION_DENIED for 7, as grpcurl and the other clients print it. */
export function codeName(code: number): string {
  return status[code] ?? String(code);
}

export function isServiceError(e: unknown): e is ServiceError {
  return typeof e === "object" && e !== null && "code" in e && "details" in e;
}
