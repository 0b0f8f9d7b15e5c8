/**
 * `npm start`: the whole mesh locally. Creates local secrets if there are
 * none (`npm run keys -- init`), applies every Worker's D1 migrations to the
 * local state in .wrangler/state, loads the demo data (seed.sql, fixed ids, so
 * a second start changes nothing), then runs all five Workers in one
 * `wrangler dev`, the gateway first, on http://127.0.0.1:8787.
 *
 *   npm start                 # the mesh with demo data
 *   npm start -- --fresh      # drop local state first
 */
import { execFileSync, spawn } from "node:child_process"
import { existsSync, rmSync } from "node:fs"
import { dirname, join } from "node:path"
import { unstable_readConfig } from "wrangler"
import { ensureLocalSecrets } from "./keys.ts"
import { root, workers } from "./mesh.ts"

const persistTo = join(root, ".wrangler/state")
const wrangler = join(root, "node_modules/.bin/wrangler")

if (process.argv.includes("--fresh")) rmSync(persistTo, { recursive: true, force: true })

// Local secrets (.dev.vars next to each config): the identity secret and a signing key.
if (await ensureLocalSecrets()) console.log("created local secrets (npm run keys -- show)")

const run = (args: ReadonlyArray<string>) =>
  execFileSync(wrangler, args, { cwd: root, stdio: ["ignore", "inherit", "inherit"], env: { ...process.env, CI: "true" } })

for (const worker of workers) {
  const config = unstable_readConfig({ config: join(root, worker.config) })
  for (const database of config.d1_databases) {
    const name = database.database_name ?? database.binding
    console.log(`\n${worker.name}: migrations and demo data for ${name}`)
    run(["d1", "migrations", "apply", name, "--local", "-c", worker.config, "--persist-to", persistTo])
    const seed = join(dirname(join(root, worker.config)), "seed.sql")
    if (existsSync(seed)) run(["d1", "execute", name, "--local", "-c", worker.config, "--persist-to", persistTo, "--file", seed])
  }
}

// The gateway's config comes first: it is the Worker wrangler dev serves on the port.
const ordered = [...workers].reverse()
const dev = spawn(
  wrangler,
  ["dev", ...ordered.flatMap((worker) => ["-c", worker.config]), "--persist-to", persistTo, "--ip", "127.0.0.1", "--port", "8787"],
  { cwd: root, stdio: "inherit" }
)
for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => dev.kill(signal))
dev.on("exit", (code) => process.exit(code ?? 0))
