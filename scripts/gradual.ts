/**
 * Cloudflare's Gradual Deployments for one Worker of the mesh, driven by
 * wrangler: upload the Worker's current code as a new version, then deploy it
 * to `percent`% of traffic beside the version serving now (`npm run mesh --
 * gradual users 10`). A second call with a higher percentage uploads and
 * splits again; 100 moves everyone to the new version.
 *
 * The gateway sends `Cloudflare-Workers-Version-Key: <user id>` with every
 * request it forwards, so each signed-in user stays on one version across
 * requests while the split holds (version affinity).
 */
import { execFileSync } from "node:child_process"
import { join } from "node:path"
import { usage } from "./cli.ts"
import { root, scriptName, workers } from "./mesh.ts"

const wrangler = join(root, "node_modules/.bin/wrangler")

/** The wrangler commands of a gradual step, with the version ids still to be found. */
export const gradualPlan = (worker: string, percent: number): ReadonlyArray<string> => {
  const config = configOf(worker)
  return [
    `wrangler versions upload -c ${config} --message "npm run mesh -- gradual ${worker} ${percent}"`,
    "wrangler deployments list -c " + config + " --json    # the version serving now",
    percent === 100
      ? `wrangler versions deploy <new version>@100% -c ${config} --yes`
      : `wrangler versions deploy <new version>@${percent}% <current version>@${100 - percent}% -c ${config} --yes`
  ]
}

const configOf = (worker: string): string => {
  const found = workers.find((candidate) => candidate.name === worker)
  if (found === undefined) return usage(`no Worker "${worker}" (one of ${workers.map((w) => w.name).join(", ")})`)
  return found.config
}

const run = (args: ReadonlyArray<string>) =>
  execFileSync(wrangler, args, { cwd: root, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] })

/** The version serving most of the Worker's traffic now, from wrangler's deployment list. */
export const currentVersion = (listing: string): string => {
  const deployments = JSON.parse(listing) as ReadonlyArray<{ versions?: ReadonlyArray<{ version_id: string; percentage: number }> }>
  const latest = deployments.at(-1)?.versions ?? []
  const main = [...latest].sort((a, b) => b.percentage - a.percentage)[0]
  if (main === undefined) throw new Error("the Worker has no deployment yet: deploy it once with npm run deploy first")
  return main.version_id
}

/** Uploads the Worker's code as a new version and deploys it to `percent`% of traffic. */
export const gradual = (worker: string, percent: number, options: { readonly dryRun: boolean }) => {
  const config = configOf(worker)
  if (options.dryRun) {
    console.log(`would run, for ${worker} (${config}):`)
    for (const command of gradualPlan(worker, percent)) console.log(`  ${command}`)
    return
  }
  const upload = run(["versions", "upload", "-c", config, "--message", `npm run mesh -- gradual ${worker} ${percent}`])
  const uploaded = /Worker Version ID:\s*([0-9a-f-]{36})/i.exec(upload)?.[1]
  if (uploaded === undefined) throw new Error(`wrangler versions upload printed no version id:\n${upload}`)
  const current = currentVersion(run(["deployments", "list", "-c", config, "--json"]))
  const split = percent === 100 || current === uploaded
    ? [`${uploaded}@100%`]
    : [`${uploaded}@${percent}%`, `${current}@${100 - percent}%`]
  console.log(run(["versions", "deploy", ...split, "-c", config, "--yes", "--message", `gradual ${percent}%`]))
  console.log(`${scriptName(workers.find((w) => w.name === worker)!)}: ${uploaded} serves ${percent}% (was ${current})`)
}
