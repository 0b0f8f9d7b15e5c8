/**
 * `npm start`: the whole mesh locally, with demo data. See `npm start -- --help`.
 *
 * Order matters: the port and a mesh already running on the local state are
 * checked before anything is touched; then the local secrets (merged into
 * each Worker's .dev.vars, never clobbering the lines a developer added), the
 * D1 migrations and demo data of each database (only when they changed since
 * the last start), then one `wrangler dev` for every Worker, gateway first,
 * its output cut down to one line per request, the Workers' own logs, and
 * warnings and errors.
 */
import { spawn } from "node:child_process"
import { createHash } from "node:crypto"
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { join, resolve } from "node:path"
import { createInterface } from "node:readline"
import { integer, main, usage } from "./cli.ts"
import { ensureLocalSecrets } from "./keys.ts"
import { applyMigrations, type LocalDatabase, localDatabases, root, workers, writeDocsAssets } from "./mesh.ts"

const help = `
npm start: the whole mesh locally (gateway, router, auth, users blue and green,
products, sessions), with demo data, on http://127.0.0.1:8787.

  npm start                               start, or restart with the state you had
  npm start -- --port 8788                listen on another port
  npm start -- --fresh                    start from empty local state
  npm start -- --otlp http://127.0.0.1:4318
                                          export every Worker's traces there
                                          (run \`npm run traces\` in another terminal)
  npm start -- --verbose                  wrangler's own output, unfiltered
  npm start -- --state <dir>              keep the local state there instead

Local state is .wrangler/state (D1, KV, Durable Objects). Local secrets are in
.keys/ and in a .dev.vars beside each Worker's wrangler config; lines you add
below the managed block of a .dev.vars (FAULT_INJECTION=true, OTLP_ENDPOINT=...)
are kept. The managed block also makes admin changes (splits, flags, revoked API
keys) take effect within a second here, not the deployed 10 s. Demo accounts:
ada@meshwork.dev / ada-local-password (admin), uma@meshwork.dev / uma-local-password (user).
`

const wrangler = join(root, "node_modules/.bin/wrangler")
// Where the local state lives: .wrangler/state, or --state (the README tour runs on its own).
let persistTo = join(root, ".wrangler/state")
const runningFile = () => join(persistTo, "meshwork-running.json")
const appliedFile = () => join(persistTo, "meshwork-applied.json")

interface Running {
  readonly pid: number
  readonly port: number
}

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** The mesh that runs on this state now, if any. */
const runningMesh = (): Running | undefined => {
  if (!existsSync(runningFile())) return undefined
  try {
    const running = JSON.parse(readFileSync(runningFile(), "utf8")) as Running
    return isAlive(running.pid) ? running : undefined
  } catch {
    return undefined
  }
}

const portIsFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

/** What a database's migrations and seed are now: when it is unchanged, nothing is re-applied. */
const fingerprint = (database: LocalDatabase): string => {
  const hash = createHash("sha256")
  const files = existsSync(database.migrations) ? readdirSync(database.migrations).filter((f) => f.endsWith(".sql")).sort() : []
  for (const file of files) hash.update(file).update(readFileSync(join(database.migrations, file)))
  if (database.seed !== undefined) hash.update("seed").update(readFileSync(database.seed))
  return hash.digest("hex")
}

const migrate = async (): Promise<void> => {
  const applied: Record<string, string> = existsSync(appliedFile()) ? JSON.parse(readFileSync(appliedFile(), "utf8")) : {}
  const d1State = join(persistTo, "v3/d1")
  const pending = localDatabases().filter((database) => !existsSync(d1State) || applied[database.id] !== fingerprint(database))
  if (pending.length === 0) {
    console.log("databases: up to date")
    return
  }
  // Applied as `wrangler d1 migrations apply --local` and `wrangler d1 execute --local --file` would
  // (the same files under <state>/v3/d1, the same migrations table, so wrangler's own commands
  // agree with it), but by one Miniflare for every database at once: a wrangler run per database
  // and step took 4-5 s each.
  const { Miniflare, convertV4MiniflareOptions } = await import("miniflare")
  const mf = new Miniflare(convertV4MiniflareOptions({
    modules: true,
    script: "",
    resourcePersistencePath: join(persistTo, "v3"),
    d1Databases: Object.fromEntries(pending.map((database, i) => [`DB${i}`, database.id]))
  }))
  try {
    await Promise.all(pending.map(async (database, i) => {
      const started = Date.now()
      await applyMigrations(await mf.getD1Database(`DB${i}`), database)
      applied[database.id] = fingerprint(database)
      const seeded = database.seed === undefined ? "" : ", demo data loaded"
      console.log(`database ${database.name}: migrated${seeded} (${((Date.now() - started) / 1000).toFixed(1)} s)`)
    }))
  } finally {
    await mf.dispose()
  }
  mkdirSync(persistTo, { recursive: true })
  writeFileSync(appliedFile(), JSON.stringify(applied, null, 2) + "\n")
}

// Lines of `wrangler dev` worth a developer's attention; the rest (banners,
// binding tables, hints) is kept aside and shown only if wrangler fails.
const ansi = /\x1b\[[0-9;]*m/g
const request = /^\[wrangler:info\] (GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS) /
const noise = [/Unable to fetch the `Request\.cf` object/, /Scheduled Workers are not automatically triggered/]
const worthShowing = (line: string): boolean =>
  !noise.some((pattern) => pattern.test(line)) &&
  (request.test(line) ||
    line.startsWith("{") ||
    /^\[(wrangler|mf):(warn|error)\]/.test(line) ||
    /\[(ERROR|WARNING)\]|^✘|Error:/.test(line))

const run = async (options: { port: number; fresh: boolean; otlp: string | undefined; verbose: boolean }) => {
  const running = runningMesh()
  if (running !== undefined) {
    throw new Error(
      `a mesh is already running on this state (pid ${running.pid}, http://127.0.0.1:${running.port}): stop it first` +
        (options.fresh ? "; --fresh never deletes the state of a running mesh" : "")
    )
  }
  if (!(await portIsFree(options.port))) {
    throw new Error(`port ${options.port} is in use: stop what listens there, or choose another with --port`)
  }
  if (options.fresh) {
    rmSync(persistTo, { recursive: true, force: true })
    console.log("local state: deleted (--fresh)")
  }
  const started = Date.now()
  const created = await ensureLocalSecrets({ otlpEndpoint: options.otlp })
  console.log(created ? "local secrets: created (npm run keys -- show)" : "local secrets: in place")
  await migrate()
  await writeDocsAssets()

  // The gateway's config comes first: it is the Worker wrangler dev serves on the port.
  const ordered = [...workers].reverse()
  const dev = spawn(
    wrangler,
    [
      "dev",
      ...ordered.flatMap((worker) => ["-c", worker.config]),
      "--persist-to", persistTo,
      "--ip", "127.0.0.1",
      "--port", String(options.port),
      "--show-interactive-dev-session=false"
    ],
    {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
      // No call to Cloudflare for a sample `request.cf` (it fails offline and prints a stack).
      env: { ...process.env, CLOUDFLARE_CF_FETCH_ENABLED: "false", WRANGLER_SEND_METRICS: "false" }
    }
  )
  mkdirSync(persistTo, { recursive: true })
  writeFileSync(runningFile(), JSON.stringify({ pid: process.pid, port: options.port } satisfies Running) + "\n")
  const cleanUp = () => rmSync(runningFile(), { force: true })

  const held: Array<string> = []
  for (const stream of [dev.stdout, dev.stderr]) {
    createInterface({ input: stream }).on("line", (raw) => {
      const line = raw.replace(ansi, "")
      if (/Ready on http/.test(line)) {
        const seconds = ((Date.now() - started) / 1000).toFixed(1)
        console.log(`\nMeshwork is up on http://127.0.0.1:${options.port} in ${seconds} s (${workers.length} Workers; Ctrl+C stops it)`)
        console.log(`  curl http://127.0.0.1:${options.port}/health`)
        console.log(`  the console: http://127.0.0.1:${options.port}/console (ada@meshwork.dev / ada-local-password)`)
        console.log(options.otlp === undefined
          ? "  traces are kept by the mesh for the console; to export them too: npm start -- --otlp http://127.0.0.1:4318, with npm run traces\n"
          : `  traces are kept by the mesh for the console, and go to ${options.otlp}\n`)
        return
      }
      if (options.verbose || worthShowing(line)) console.log(raw)
      else {
        held.push(raw)
        if (held.length > 300) held.shift()
      }
    })
  }
  // Asked to stop, wrangler exits non-zero: that is no failure, and its held-back output stays unshown.
  let stopping = false
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => {
      stopping = true
      dev.kill(signal)
    })
  }
  dev.on("exit", (code, signal) => {
    cleanUp()
    if (code !== 0 && signal === null && !stopping) {
      console.error(held.join("\n"))
      console.error(`wrangler dev exited with code ${code}`)
    }
    process.exit(stopping ? 0 : code ?? 0)
  })
}

await main({
  name: "npm start",
  help,
  options: {
    port: { type: "string" },
    fresh: { type: "boolean" },
    otlp: { type: "string" },
    verbose: { type: "boolean" },
    state: { type: "string" }
  },
  run: ({ values, positionals }) => {
    if (positionals.length > 0) usage(`unexpected argument "${positionals[0]}"`)
    if (values.state !== undefined) persistTo = resolve(values.state)
    const otlp = values.otlp
    if (otlp !== undefined && !/^https?:\/\/[^/]+/.test(otlp)) usage(`--otlp takes a URL like http://127.0.0.1:4318, not "${otlp}"`)
    return run({
      port: values.port === undefined ? 8787 : integer(values.port, "--port", { min: 1, max: 65535 }),
      fresh: values.fresh ?? false,
      otlp,
      verbose: values.verbose ?? false
    })
  }
})
