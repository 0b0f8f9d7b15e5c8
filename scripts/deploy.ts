/**
 * `npm run deploy`: deploys every Worker of the mesh to Cloudflare, in
 * dependency order (a Worker after every Worker it binds), applying each D1
 * database's pending migrations before the Worker that uses it, and creating
 * the queues it produces to or consumes (and their dead-letter queues) if they
 * do not exist yet.
 *
 *   npm run deploy                 # needs `wrangler login` (or CLOUDFLARE_API_TOKEN)
 *   npm run deploy -- --dry-run    # bundle each Worker, print its size and what fills it, deploy nothing
 *   npm run deploy -- --worker users --color green   # one Worker (one colour of it)
 *
 * Before the first deploy, create the D1 databases (`wrangler d1 create
 * meshwork-users`, `wrangler d1 create meshwork-products`) and put the ids
 * they print into the `database_id` of each service's wrangler.toml.
 */
import { build } from "esbuild"
import { execFileSync } from "node:child_process"
import { join, relative } from "node:path"
import type { unstable_readConfig } from "wrangler"
import { main, usage } from "./cli.ts"
import { entry, type MeshWorker, root, workerdBuild, workers, wranglerApi, writeDocsAssets } from "./mesh.ts"

const help = `
npm run deploy: deploy the mesh's Workers to Cloudflare, each after the Workers it binds,
with its D1 migrations applied first and its queues created if missing.

  npm run deploy                                  every Worker (needs wrangler login or CLOUDFLARE_API_TOKEN)
  npm run deploy -- --worker users                users, blue and green
  npm run deploy -- --worker users --color green  green alone
  npm run deploy -- --dry-run [--worker ...]      bundle, print each size and its largest parts, fail over 150 KiB gzip; deploy nothing (offline)

Workers: ${workers.map((worker) => worker.name).filter((name) => !name.includes("-")).join(", ")}
`

const wrangler = join(root, "node_modules/.bin/wrangler")

const run = (args: ReadonlyArray<string>) =>
  execFileSync(wrangler, args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] })

/** Every queue a config names: produced to, consumed, or dead-lettered into. */
const queuesOf = (config: ReturnType<typeof unstable_readConfig>): ReadonlySet<string> => {
  const names = new Set<string>()
  for (const producer of config.queues.producers ?? []) names.add(producer.queue)
  for (const consumer of config.queues.consumers ?? []) {
    names.add(consumer.queue)
    if (consumer.dead_letter_queue !== undefined) names.add(consumer.dead_letter_queue)
  }
  return names
}

/** Creates a queue; one that exists already makes wrangler fail, which is fine here. */
const ensureQueue = (name: string) => {
  try {
    console.log(run(["queues", "create", name]))
  } catch {
    console.log(`queue ${name}: not created (it exists already, or see wrangler's message above)`)
  }
}

/** What fills a Worker's bundle: minified bytes by package (or source folder), the largest first. */
const contributors = async (worker: MeshWorker, top: number): Promise<string> => {
  const result = await build({
    ...workerdBuild,
    entryPoints: [entry(worker)],
    write: false,
    metafile: true,
    minify: true,
    external: [...workerdBuild.external, "node:*"],
    logLevel: "silent",
    outfile: "worker.js"
  })
  const bytes = new Map<string, number>()
  for (const output of Object.values(result.metafile.outputs)) {
    for (const [input, { bytesInOutput }] of Object.entries(output.inputs)) {
      const path = relative(root, input)
      const module = /node_modules\/((?:@[^/]+\/)?[^/]+)\/(?:dist\/)?(?:esm\/)?(?:internal\/)?([^/.]+)?/.exec(path)
      const name = module === null ? path.split("/").slice(0, 3).join("/") : `${module[1]}/${module[2] ?? ""}`
      bytes.set(name, (bytes.get(name) ?? 0) + bytesInOutput)
    }
  }
  return [...bytes].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([name, size]) => `${name} ${(size / 1024).toFixed(0)} KiB`).join(", ")
}

const selected = (worker: string | undefined, color: string | undefined): ReadonlyArray<MeshWorker> => {
  if (color !== undefined && worker === undefined) return usage("--color needs --worker, e.g. --worker users --color green")
  if (worker === undefined) return workers
  const chosen = workers.filter((candidate) => candidate.name === worker || candidate.name.startsWith(`${worker}-`))
  if (chosen.length === 0) return usage(`no Worker "${worker}"`)
  if (color === undefined) return chosen
  const colored = chosen.filter((candidate) =>
    color === "blue" ? candidate.name === worker : candidate.name === `${worker}-${color}`)
  return colored.length > 0 ? colored : usage(`${worker} has no ${color} version`)
}

/** The most a mesh Worker may weigh, gzip: a new isolate compiles and evaluates all of it before its first answer. */
const budgetKiB = 150

const deploy = async (options: { dryRun: boolean; worker: string | undefined; color: string | undefined }) => {
  await writeDocsAssets()
  for (const worker of selected(options.worker, options.color)) {
    const config = wranglerApi().unstable_readConfig({ config: join(root, worker.config) })
    if (options.dryRun) {
      const out = run(["deploy", "-c", worker.config, "--dry-run", "--outdir", join(root, ".build/deploy", worker.name)])
      const size = /Total Upload: (.*)/.exec(out)?.[1] ?? "unknown size"
      console.log(`${config.name}: ${size}\n  largest parts: ${await contributors(worker, 6)}`)
      const gzip = Number(/gzip: ([\d.]+) KiB/.exec(size)?.[1])
      if (gzip > budgetKiB) {
        console.error(`${config.name} is over the mesh's ${budgetKiB} KiB gzip budget per Worker (docs/deploy.md#bundle-size)`)
        process.exitCode = 1
      }
      continue
    }
    for (const queue of queuesOf(config)) ensureQueue(queue)
    for (const database of config.d1_databases) {
      console.log(run(["d1", "migrations", "apply", database.database_name ?? database.binding, "--remote", "-c", worker.config]))
    }
    console.log(run(["deploy", "-c", worker.config]))
  }
}

await main({
  name: "npm run deploy",
  help,
  options: { "dry-run": { type: "boolean" }, worker: { type: "string" }, color: { type: "string" } },
  run: ({ values, positionals }) => {
    if (positionals.length > 0) usage(`unexpected argument "${positionals[0]}"`)
    return deploy({ dryRun: values["dry-run"] ?? false, worker: values.worker, color: values.color })
  }
})
