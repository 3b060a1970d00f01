// Generates src/gen from the repository's protos with buf and the local
// protoc-gen-es (see buf.gen.yaml).
//
//   node scripts/generate.mjs          regenerate src/gen
//   node scripts/generate.mjs --check  fail when the committed src/gen is stale
//
// buf comes from the repository's .venv (`make install`), or from $BUF.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const root = resolve(pkg, "..", "..");
const buf = process.env.BUF ?? join(root, ".venv", "bin", "buf");
const genDir = join(pkg, "src", "gen");

if (!existsSync(buf)) {
  console.error(`buf not found at ${buf}: run \`make install\` at the repository root (or set BUF)`);
  process.exit(2);
}

function run(outBase) {
  const args = ["generate", root, "--template", join(pkg, "buf.gen.yaml")];
  if (outBase) args.push("--output", outBase);
  const result = spawnSync(buf, args, { cwd: pkg, stdio: "inherit" });
  if (result.status !== 0) {
    console.error(`buf generate failed (exit ${result.status ?? result.signal})`);
    process.exit(1);
  }
}

function listFiles(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.push(relative(dir, p));
    }
  };
  if (existsSync(dir)) walk(dir);
  return out.sort();
}

if (process.argv.includes("--check")) {
  const tmp = mkdtempSync(join(tmpdir(), "fenlo-ts-gen-"));
  try {
    run(tmp);
    const fresh = join(tmp, "src", "gen");
    const want = listFiles(fresh);
    const have = listFiles(genDir);
    const stale = [
      ...want.filter((f) => !have.includes(f) || !readFileSync(join(fresh, f)).equals(readFileSync(join(genDir, f)))),
      ...have.filter((f) => !want.includes(f)),
    ];
    if (stale.length > 0) {
      console.error("clients/typescript/src/gen is stale; run `npm run generate` (or `make generate`):");
      for (const f of stale) console.error(`  ${f}`);
      process.exit(1);
    }
    console.log(`clients/typescript/src/gen is fresh (${want.length} files)`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
} else {
  run(undefined);
  console.log(`generated ${listFiles(genDir).length} files in clients/typescript/src/gen`);
}
