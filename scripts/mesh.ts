/**
 * The mesh's Workers as Node-side tooling sees them: where each config is,
 * how to bundle each Worker, and its Miniflare options (derived from its
 * wrangler config, so tests and the benchmark run what `wrangler dev` and
 * `wrangler deploy` run).
 */
import { build, type BuildOptions } from "esbuild"
import type { LegacyWorkerOptions, Miniflare } from "miniflare"
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { basename, dirname, join, resolve } from "node:path"
import { pathToFileURL } from "node:url"

/**
 * wrangler, loaded on first use: loading it takes a second of CPU, which
 * `--help`, a usage error or a CLI that never reads a config should not pay.
 */
export const wranglerApi = (): typeof import("wrangler") => createRequire(import.meta.url)("wrangler")

export interface MeshWorker {
  /** Short name: the folder under src/services/. */
  readonly name: string
  /** Path of its wrangler config, from the repository root. */
  readonly config: string
}

/** In deployment order: a Worker comes after every Worker it binds. */
export const workers: ReadonlyArray<MeshWorker> = [
  { name: "users", config: "src/services/users/wrangler.toml" },
  { name: "users-green", config: "src/services/users/wrangler.green.toml" },
  { name: "products", config: "src/services/products/wrangler.toml" },
  { name: "auth", config: "src/services/auth/wrangler.toml" },
  { name: "sessions", config: "src/services/sessions/wrangler.toml" },
  { name: "docs", config: "src/services/docs/wrangler.toml" },
  { name: "router", config: "src/services/router/wrangler.toml" },
  { name: "gateway", config: "wrangler.toml" }
]

export const root = resolve(import.meta.dirname, "..")

/** The deployed name (`name` in its wrangler config) of a mesh Worker. */
export const scriptName = (worker: MeshWorker): string => {
  const name = wranglerApi().unstable_readConfig({ config: join(root, worker.config) }).name
  if (name === undefined) throw new Error(`${worker.config} has no name`)
  return name
}

/** The Worker's entry module, resolved against its config file. */
export const entry = (worker: MeshWorker): string => {
  const main = wranglerApi().unstable_readConfig({ config: join(root, worker.config) }).main
  if (main === undefined) throw new Error(`${worker.config} has no main`)
  return resolve(root, dirname(worker.config), main)
}

/** esbuild's options for a Worker as wrangler builds it for workerd (ESM, workerd conditions). */
export const workerdBuild = {
  bundle: true,
  format: "esm",
  platform: "neutral",
  target: "es2024",
  mainFields: ["module", "main"],
  conditions: ["workerd", "worker", "browser"],
  external: ["cloudflare:*"]
} as const satisfies BuildOptions

/** Builds under way, by output file: callers that ask at once (vitest's pool workers) share one build. */
const building = new Map<string, Promise<string>>()

/** Bundles one module the way wrangler does for workerd. */
export const bundle = (entryPoint: string, outfile: string, options: { readonly minify?: boolean } = {}): Promise<string> => {
  const key = `${outfile}\0${entryPoint}\0${options.minify ?? false}`
  const pending = building.get(key)
  if (pending !== undefined) return pending
  const done = build({
    ...workerdBuild,
    entryPoints: [entryPoint],
    outfile,
    minify: options.minify ?? false,
    sourcemap: "linked",
    logLevel: "warning"
  }).then(() => outfile).finally(() => building.delete(key))
  building.set(key, done)
  return done
}

const isEmpty = (value: unknown): boolean =>
  value === undefined || (Array.isArray(value) ? value.length === 0 : typeof value === "object" && value !== null
    ? Object.keys(value).length === 0
    : false)

/** Option keys that only matter to wrangler's own dev server. */
const devOnly = new Set(["rootPath", "modulesRules", "connectHandlers", "email"])

/**
 * Miniflare options for one Worker, bindings taken from its wrangler config,
 * code from a bundle. Only the options the config actually sets are kept.
 * Vars come from the config only: a local `.dev.vars` (what `npm start`
 * writes) never reaches the tests or the bench, whose secrets are `secrets`.
 */
export const miniflareOptions = (
  worker: MeshWorker,
  scriptPath: string,
  secrets: Record<string, unknown> = {}
): LegacyWorkerOptions => {
  const config = join(root, worker.config)
  const { workerOptions } = wranglerApi().unstable_getMiniflareWorkerOptions(config)
  const options: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(workerOptions)) {
    if (!devOnly.has(key) && !isEmpty(value)) options[key] = value
  }
  const declared = new Set(Object.keys(wranglerApi().unstable_readConfig({ config }).vars ?? {}))
  const fromConfig = Object.entries((options["bindings"] ?? {}) as Record<string, unknown>).filter(([name]) => declared.has(name))
  const bindings = { ...Object.fromEntries(fromConfig), ...secrets }
  return { ...options, bindings, name: scriptName(worker), modules: true, scriptPath } as LegacyWorkerOptions
}

/**
 * Scalar's API reference script (3.2 MB), the one Effect ships for
 * `HttpApiScalar.layer` (pinned with `effect`; its package exports do not name
 * this internal module, so it is read by path).
 */
const scalarModule = join(root, "node_modules/effect/dist/http-api/internal/httpApiScalar.js")

/** The docs Worker's static assets: the `[assets]` directory of src/services/docs/wrangler.toml. */
export const docsAssets = join(root, ".build/docs-assets")

/** How the assets are served (Workers' `_headers` format): an hour, then a revalidation by ETag. */
const assetHeaders = `/api/docs/scalar.js
  Content-Type: text/javascript; charset=utf-8
  Cache-Control: public, max-age=3600
  X-Content-Type-Options: nosniff
`

/**
 * Writes the docs Worker's static assets, unless those of this `effect` are
 * in place: Scalar's script, for the gateway's `/api/docs` page, and the
 * headers it is served with. Wrangler uploads them beside the Worker and
 * serves them before it runs (service binding calls included), so no
 * Worker's bundle holds the script. Run before any Worker is started or
 * deployed: wrangler needs the directory. Each file is renamed into place,
 * so a mesh already serving them (tests start three at once) never reads
 * one half written.
 */
export const writeDocsAssets = async (): Promise<void> => {
  const effectVersion = (JSON.parse(readFileSync(join(root, "node_modules/effect/package.json"), "utf8")) as { version: string }).version
  const stamp = `${effectVersion} ${statSync(scalarModule).size}\n${assetHeaders}`
  const stampFile = `${docsAssets}.stamp`
  const script = join(docsAssets, "api/docs/scalar.js")
  if (existsSync(stampFile) && readFileSync(stampFile, "utf8") === stamp && existsSync(script)) return
  const { javascript } = await import(pathToFileURL(scalarModule).href) as { readonly javascript: string }
  const write = (file: string, text: string) => {
    mkdirSync(dirname(file), { recursive: true })
    // Written beside the directory, not in it: a mesh starting meanwhile would list it as an asset.
    const partial = `${docsAssets}.${process.pid}.${basename(file)}.partial`
    writeFileSync(partial, text)
    renameSync(partial, file)
  }
  write(script, javascript)
  write(join(docsAssets, "_headers"), assetHeaders)
  write(stampFile, stamp)
}

/**
 * Bundles every mesh Worker into `outdir/<name>.js` and returns their Miniflare
 * options. `secrets(name)` gives each Worker the secrets wrangler would read
 * from .dev.vars (the identity secret, the auth signing keys), and any var to
 * override.
 */
export const buildMesh = async (
  outdir: string,
  options: { readonly minify?: boolean; readonly secrets?: (name: string) => Record<string, unknown> } = {}
) => {
  await writeDocsAssets()
  return Promise.all(workers.map(async (worker) => {
    const scriptPath = await bundle(entry(worker), join(outdir, `${worker.name}.js`), { minify: options.minify ?? false })
    return miniflareOptions(worker, scriptPath, options.secrets?.(worker.name))
  }))
}

/** A local D1 database of the mesh, with its migrations and demo data. */
export interface LocalDatabase {
  readonly id: string
  readonly name: string
  /** The binding it has in the first Worker that binds it. */
  readonly binding: string
  /** That Worker's config. */
  readonly config: string
  readonly migrations: string
  /** The table wrangler records applied migrations in (`migrations_table`, default d1_migrations). */
  readonly migrationsTable: string
  readonly seed: string | undefined
}

/** Each D1 database of the mesh once (blue and green share users'), with its migrations and seed. */
export const localDatabases = (): Array<LocalDatabase> => {
  const byId = new Map<string, LocalDatabase>()
  for (const worker of workers) {
    const config = wranglerApi().unstable_readConfig({ config: join(root, worker.config) })
    const dir = dirname(join(root, worker.config))
    for (const database of config.d1_databases) {
      const id = database.database_id ?? database.binding
      if (byId.has(id)) continue
      const seed = join(dir, "seed.sql")
      byId.set(id, {
        id,
        name: database.database_name ?? database.binding,
        binding: database.binding,
        config: worker.config,
        migrations: join(dir, database.migrations_dir ?? "migrations"),
        migrationsTable: database.migrations_table ?? "d1_migrations",
        seed: existsSync(seed) ? seed : undefined
      })
    }
  }
  return [...byId.values()]
}

/**
 * Applies a database's pending migrations and then its seed, as `wrangler d1
 * migrations apply` and `wrangler d1 execute --file` would: each migration
 * with its record in wrangler's migrations table, in one batch.
 */
export const applyMigrations = async (db: Awaited<ReturnType<Miniflare["getD1Database"]>>, database: LocalDatabase): Promise<void> => {
  const { unstable_splitSqlQuery: statements } = wranglerApi()
  const table = `"${database.migrationsTable.replace(/"/g, '""')}"`
  await db.exec(`CREATE TABLE IF NOT EXISTS ${table} (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL)`)
  const done = new Set((await db.prepare(`SELECT name FROM ${table}`).all<{ name: string }>()).results.map((row) => row.name))
  const files = existsSync(database.migrations) ? readdirSync(database.migrations).filter((f) => f.endsWith(".sql")).sort() : []
  for (const file of files.filter((f) => !done.has(f))) {
    await db.batch([
      ...statements(readFileSync(join(database.migrations, file), "utf8")).map((sql) => db.prepare(sql)),
      db.prepare(`INSERT INTO ${table} (name) VALUES (?)`).bind(file)
    ])
  }
  if (database.seed !== undefined) await db.batch(statements(readFileSync(database.seed, "utf8")).map((sql) => db.prepare(sql)))
}
