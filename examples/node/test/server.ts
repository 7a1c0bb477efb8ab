// Starts the real server binary on a free loopback port, with a development
// PKI made by the certs binary.
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

/** This example's directory, and the repository root. */
export const HERE = resolve(__dirname, "..", "..");
export const ROOT = resolve(HERE, "..", "..");
/** The built binaries: MTLS_BIN_DIR, else ROOT/target/debug. */
export const BIN = process.env.MTLS_BIN_DIR ?? join(ROOT, "target", "debug");

/** Makes a PKI in dir: ca.pem, server.pem/key, and NAME.pem/key for each development identity. */
export function makePki(dir: string): string {
  execFileSync(join(BIN, "certs"), ["--dir", dir, "init"], { stdio: "pipe" });
  return dir;
}

export interface RunningServer {
  addr: string;
  certs: string;
  stop(): Promise<void>;
}

export async function startServer(): Promise<RunningServer> {
  const tmp = realpathSync(mkdtempSync(join(tmpdir(), "node-interop-")));
  const certs = makePki(join(tmp, "certs"));
  const env = { ...process.env };
  delete env.RUST_LOG;
  const proc: ChildProcess = spawn(
    join(BIN, "server"),
    [
      "--listen", "127.0.0.1:0",
      // No fixed port: tests may run servers side by side.
      "--metrics-listen", "127.0.0.1:0",
      "--cert", join(certs, "server.pem"),
      "--key", join(certs, "server.key"),
      "--client-ca", join(certs, "ca.pem"),
      "--policy", join(ROOT, "config", "policy.json"),
      "--log-format", "json",
    ],
    { stdio: ["ignore", "ignore", "pipe"], env },
  );
  const exited = new Promise<void>((done) => proc.once("exit", () => done()));
  // The server binds before it logs "listening", so the logged address is
  // ready: no sleeping. Keep reading afterwards so the pipe never fills.
  const seen: string[] = [];
  let addr: string | undefined;
  for await (const line of createInterface({ input: proc.stderr! })) {
    seen.push(line);
    try {
      const event = JSON.parse(line);
      if (event.message === "listening (mutual TLS)") {
        addr = event.addr;
        break;
      }
    } catch {
      // not JSON: a panic message, say
    }
  }
  if (addr === undefined) {
    rmSync(tmp, { recursive: true, force: true });
    throw new Error(`server did not start:\n${seen.join("\n")}`);
  }
  proc.stderr!.resume();
  return {
    addr,
    certs,
    async stop() {
      proc.kill("SIGTERM");
      await exited;
      rmSync(tmp, { recursive: true, force: true });
    },
  };
}
