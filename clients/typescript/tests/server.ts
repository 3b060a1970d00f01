// Starts a real Fenlo server (`.venv/bin/fenlo serve` from the repository
// root) on a free 127.0.0.1 port with a temporary data dir, and runs the
// operator CLI against the same data dir and JWT secret.
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const STARTUP_TIMEOUT_MS = 60_000;
const CLI_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 15_000;

function repositoryRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "protos", "fenlo", "v1"))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error("cannot find the repository root (protos/fenlo/v1) above the tests");
    dir = parent;
  }
}

async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      const port = typeof address === "object" && address !== null ? address.port : 0;
      probe.close(() => resolvePort(port));
    });
  });
}

export interface FenloServer {
  /** `127.0.0.1:<port>`. */
  target: string;
  /** Runs `fenlo <args>` with the server's settings; resolves with the last line printed. */
  cli(args: string[]): Promise<string>;
  /** Everything the server printed so far. */
  output(): string;
  /** SIGTERM, then SIGKILL after a while; removes the data dir. Safe to call twice. */
  stop(): Promise<void>;
}

export async function startServer(): Promise<FenloServer> {
  const root = repositoryRoot();
  const fenlo = process.env.FENLO_BIN ?? join(root, ".venv", "bin", "fenlo");
  if (!existsSync(fenlo)) throw new Error(`${fenlo} not found: run \`make install\` at the repository root`);
  const dataDir = mkdtempSync(join(tmpdir(), "fenlo-ts-test-"));
  const port = await freePort();
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    FENLO_DATA_DIR: dataDir,
    FENLO_HOST: "127.0.0.1",
    FENLO_PORT: String(port),
    FENLO_METRICS_PORT: "0",
    FENLO_JWT_SECRET: randomBytes(32).toString("hex"),
    FENLO_LLM_ORDER: "offline",
    FENLO_OFFLINE_TOKENS_PER_SECOND: "50",
  };
  // The embedded defaults only: no database, Redis or LLM the caller's shell may point at.
  for (const name of ["FENLO_DATABASE_URL", "FENLO_REDIS_URL", "GROQ_API_KEY", "OPENAI_API_KEY"]) delete env[name];

  let log = "";
  const child: ChildProcess = spawn(fenlo, ["serve"], { cwd: dataDir, env, stdio: ["ignore", "pipe", "pipe"] });
  const exited = new Promise<void>((resolveExit) => child.once("exit", () => resolveExit()));
  // Never leave a server behind, even if the test process dies.
  const killOnExit = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);

  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    process.removeListener("exit", killOnExit);
    rmSync(dataDir, { recursive: true, force: true });
  };

  try {
    await new Promise<void>((ready, fail) => {
      const timer = setTimeout(
        () => fail(new Error(`fenlo serve did not start within ${STARTUP_TIMEOUT_MS} ms:\n${log}`)),
        STARTUP_TIMEOUT_MS,
      );
      const onData = (chunk: Buffer): void => {
        log += chunk.toString();
        if (log.includes("fenlo: listening on")) {
          clearTimeout(timer);
          ready();
        }
      };
      child.stdout?.on("data", onData);
      child.stderr?.on("data", onData);
      child.once("error", (err) => {
        clearTimeout(timer);
        fail(err);
      });
      child.once("exit", (code, signal) => {
        clearTimeout(timer);
        fail(new Error(`fenlo serve exited (${code ?? signal}) before listening:\n${log}`));
      });
    });
  } catch (err) {
    await stop();
    throw err;
  }

  const cli = (args: string[]): Promise<string> =>
    new Promise((done, fail) => {
      execFile(fenlo, args, { cwd: dataDir, env, timeout: CLI_TIMEOUT_MS }, (err, stdout, stderr) => {
        if (err) {
          fail(new Error(`fenlo ${args.join(" ")} failed: ${err.message}\n${stdout}${stderr}`));
          return;
        }
        const lines = stdout.split("\n").map((line) => line.trim()).filter((line) => line !== "");
        const last = lines[lines.length - 1];
        if (last === undefined) fail(new Error(`fenlo ${args.join(" ")} printed nothing\n${stderr}`));
        else done(last);
      });
    });

  return { target: `127.0.0.1:${port}`, cli, output: () => log, stop };
}

