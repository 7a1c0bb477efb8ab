// A grpc.health.v1 Health/Check client. The two messages are small enough to
// encode by hand, so the health .proto need not be vendored and generated.
import { BinaryReader, BinaryWriter } from "@bufbuild/protobuf/wire";
import { type Client, Metadata, type ServiceError } from "@grpc/grpc-js";

/** HealthCheckResponse.ServingStatus names, by number. */
const STATUS = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

/** Check `service` ("" for the whole server); resolves to e.g. "SERVING". */
export function check(client: Client, service: string, deadline: Date, metadata = new Metadata()): Promise<string> {
  return new Promise((resolve, reject) => {
    client.makeUnaryRequest(
      "/grpc.health.v1.Health/Check",
      (request: string) => Buffer.from(new BinaryWriter().uint32(10).string(request).finish()),
      (bytes: Buffer) => {
        const reader = new BinaryReader(bytes);
        let status = 0;
        while (reader.pos < reader.len) {
          const [field, wireType] = reader.tag();
          if (field === 1) status = reader.int32();
          else reader.skip(wireType);
        }
        return STATUS[status] ?? String(status);
      },
      service,
      metadata,
      { deadline },
      (err: ServiceError | null, value?: string) => (err ? reject(err) : resolve(value!)),
    );
  });
}
