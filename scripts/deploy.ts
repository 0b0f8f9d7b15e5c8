/**
 * `npm run deploy`: deploys every Worker of the mesh to Cloudflare, in
 * dependency order (a Worker after every Worker it binds), applying each D1
 * database's pending migrations before the Worker that uses it, and creating
 * the queues it produces to or consumes (and their dead-letter queues) if they
 * do not exist yet.
 *
 *   npm run deploy                 # needs `wrangler login` (or CLOUDFLARE_API_TOKEN)
 *   npm run deploy -- --dry-run    # bundle each Worker, print its size, deploy nothing
 *
 * Before the first deploy, create the D1 databases (`wrangler d1 create
 * meshwork-users`, `wrangler d1 create meshwork-products`) and put the ids
 * they print into the `database_id` of each service's wrangler.toml.
 */
import { execFileSync } from "node:child_process"
import { join } from "node:path"
import { unstable_readConfig } from "wrangler"
import { root, workers } from "./mesh.ts"

const dryRun = process.argv.includes("--dry-run")
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

for (const worker of workers) {
  const config = unstable_readConfig({ config: join(root, worker.config) })
  if (dryRun) {
    const out = run(["deploy", "-c", worker.config, "--dry-run", "--outdir", join(root, ".build/deploy", worker.name)])
    const size = /Total Upload: (.*)/.exec(out)?.[1] ?? "unknown size"
    console.log(`${config.name}: ${size}`)
    continue
  }
  for (const queue of queuesOf(config)) ensureQueue(queue)
  for (const database of config.d1_databases) {
    console.log(run(["d1", "migrations", "apply", database.database_name ?? database.binding, "--remote", "-c", worker.config]))
  }
  console.log(run(["deploy", "-c", worker.config]))
}
