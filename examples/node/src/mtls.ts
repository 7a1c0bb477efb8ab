// Mutual TLS for @grpc/grpc-js: one place that reads the PEM files and
// builds the channel credentials, and a probe that reports what a TLS
// handshake with the same settings negotiates.
import { readFileSync } from "node:fs";
import * as tls from "node:tls";
import { credentials, type ChannelCredentials, type ChannelOptions } from "@grpc/grpc-js";

export interface MtlsOptions {
  /** host:port. May be an IP: the certificate is checked against serverName. */
  addr: string;
  /** The DNS name the server's certificate must carry. */
  serverName: string;
  /** Client certificate chain and private key (PEM files). */
  cert: string;
  key: string;
  /** PEM bundle the server's certificate must chain to. */
  ca: string;
}

/** Credentials and channel options for a grpc-js client constructor. */
export function channel(o: MtlsOptions): { creds: ChannelCredentials; options: ChannelOptions } {
  const creds = credentials.createSsl(readFileSync(o.ca), readFileSync(o.key), readFileSync(o.cert));
  return {
    creds,
    options: {
      // The name the server's certificate must carry (SNI and the check),
      // whatever addr says.
      "grpc.ssl_target_name_override": o.serverName,
      "grpc.default_authority": o.serverName,
    },
  };
}

export interface Negotiated {
  /** "TLSv1.3" */
  protocol: string | null;
  /** ALPN; gRPC needs "h2". */
  alpn: string | false | null;
  cipher: string;
  /** The key exchange group, e.g. "X25519". */
  group: string | undefined;
}

/**
 * grpc-js does not expose its TLS socket, so this makes one handshake with
 * the settings grpc-js uses (the same CA, client certificate, server name and
 * ALPN h2, on the same Node TLS stack) and reports what it negotiated.
 */
export function probe(o: MtlsOptions): Promise<Negotiated> {
  const [host, port] = splitHostPort(o.addr);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      servername: o.serverName,
      ca: readFileSync(o.ca),
      cert: readFileSync(o.cert),
      key: readFileSync(o.key),
      ALPNProtocols: ["h2"],
      minVersion: "TLSv1.2",
    });
    socket.once("secureConnect", () => {
      const key = socket.getEphemeralKeyInfo();
      const result: Negotiated = {
        protocol: socket.getProtocol(),
        alpn: socket.alpnProtocol,
        cipher: socket.getCipher().name,
        group: key && "name" in key ? key.name : undefined,
      };
      socket.end();
      resolve(result);
    });
    socket.once("error", reject);
  });
}

function splitHostPort(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i).replace(/^\[|\]$/g, ""), Number(addr.slice(i + 1))];
}
