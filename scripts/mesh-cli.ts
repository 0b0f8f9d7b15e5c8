/**
 * `npm run mesh`: drive a mesh's traffic splits and feature flags through its
 * gateway's admin API (src/layers/release/MeshAdmin.ts), and its API keys
 * through the auth service's (`/api/auth/keys`).
 *
 *   npm run mesh -- status
 *   npm run mesh -- traffic users green 20        # 20% of users to green (stable stays as it is, else blue)
 *   npm run mesh -- traffic users green 100 --stable blue
 *   npm run mesh -- promote users green           # green becomes the stable version, no canary
 *   npm run mesh -- rollback users                # weight 0 for the canary (routers follow within their cache time)
 *   npm run mesh -- faults users green 50         # abort half the calls to green (FAULT_INJECTION routers only)
 *   npm run mesh -- live                          # the mesh's live figures, as the console shows them
 *   npm run mesh -- flags                          # every flag
 *   npm run mesh -- flags set new-checkout 10      # on for 10% of users (its user and role targets kept)
 *   npm run mesh -- flags set new-checkout 0 --users <id>,<id> --roles admin
 *   npm run mesh -- flags off new-checkout         # the kill switch
 *   npm run mesh -- flags delete new-checkout
 *   npm run mesh -- gradual users 10 [--dry-run]  # Gradual Deployments of one Worker (scripts/gradual.ts)
 *
 * Where: `--url` or MESH_URL (default http://127.0.0.1:8787, the mesh of
 * `npm start`). Who: `--token` or MESH_TOKEN, else MESH_EMAIL and
 * MESH_PASSWORD to log in; against 127.0.0.1 it logs in as the demo admin.
 * A token it logged in for is kept in .wrangler/mesh-cli-token.json until a
 * minute before it expires, so a series of commands logs in once.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { integer, main, usage } from "./cli.ts"
import { gradual } from "./gradual.ts"
import { root } from "./mesh.ts"

const help = `
npm run mesh: a running mesh's traffic splits, feature flags and API keys, through its API.

  npm run mesh -- status                           every traffic split and feature flag
  npm run mesh -- traffic [<service>]              the splits (of one service)
  npm run mesh -- traffic users green 20           20% of users to green (the stable version stays)
  npm run mesh -- traffic users green 100 --stable blue
  npm run mesh -- promote users green              green is the stable version, no canary
  npm run mesh -- promote users blue               back to blue
  npm run mesh -- rollback users                   weight 0 for the canary
  npm run mesh -- mirror users green 10            copy 10% of blue's GETs to green and compare the answers
                                                   (0 stops); no user is moved
  npm run mesh -- mirror users                     the mirrored requests: matched, mismatched, the newest mismatches
  npm run mesh -- faults users green 50            abort half the calls to green with 503 (where the router's
                                                   FAULT_INJECTION is on, as under npm start); 0 removes them
  npm run mesh -- live [--minutes 5]               calls, failures and p50/p99 per service and version across
                                                   every isolate, policy decisions, breaker transitions
  npm run mesh -- flags                            every flag
  npm run mesh -- flags <name>                     one flag
  npm run mesh -- flags set new-checkout 10 [--users <id>,<id>] [--roles admin]
  npm run mesh -- flags off new-checkout           the kill switch
  npm run mesh -- flags delete new-checkout
  npm run mesh -- gradual users 10 [--dry-run]     Cloudflare's Gradual Deployments: upload users' code
                                                   as a new version, deploy it to 10% beside the current one
  npm run mesh -- keys create <name> [--user <id>] [--roles user,admin] [--plan free]
                  [--per-minute 60] [--per-day 10000] [--expires-in <days>]
                                                   an API key for a machine client, shown once
  npm run mesh -- keys list [--user <id>]          API keys (yours, or with --user, that user's)
  npm run mesh -- keys revoke <id>                 the gateway refuses it within 10 s

Options: --url (or MESH_URL; default http://127.0.0.1:8787, the mesh of npm start),
--token (or MESH_TOKEN), else MESH_EMAIL and MESH_PASSWORD to log in (against
127.0.0.1 the demo admin). A token it logged in for is reused until it expires.
`

interface Flags {
  readonly url?: string | undefined
  readonly token?: string | undefined
  readonly stable?: string | undefined
  readonly users?: string | undefined
  readonly roles?: string | undefined
  readonly "dry-run"?: boolean | undefined
  readonly user?: string | undefined
  readonly plan?: string | undefined
  readonly "per-minute"?: string | undefined
  readonly "per-day"?: string | undefined
  readonly "expires-in"?: string | undefined
  readonly minutes?: string | undefined
}

const tokenFile = join(root, ".wrangler/mesh-cli-token.json")

const session = (flags: Flags) => {
  const base = (flags.url ?? process.env["MESH_URL"] ?? "http://127.0.0.1:8787").replace(/\/$/, "")
  const isLocal = /^https?:\/\/(127\.0\.0\.1|localhost)(:\d+)?$/.test(base)
  const email = process.env["MESH_EMAIL"] ?? (isLocal ? "ada@meshwork.dev" : undefined)
  const password = process.env["MESH_PASSWORD"] ?? (isLocal ? "ada-local-password" : undefined)
  const cacheKey = `${base} ${email}`

  const cached = (): string | undefined => {
    if (!existsSync(tokenFile)) return undefined
    const entry = (JSON.parse(readFileSync(tokenFile, "utf8")) as Record<string, { token: string; expiresAt: number }>)[cacheKey]
    return entry !== undefined && entry.expiresAt - 60_000 > Date.now() ? entry.token : undefined
  }

  const login = async (): Promise<string> => {
    if (email === undefined || password === undefined) {
      return usage("who are you? give --token, MESH_TOKEN, or MESH_EMAIL and MESH_PASSWORD")
    }
    const response = await fetch(`${base}/api/auth/login`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ email, password })
    }).catch((error: unknown) => {
      throw new Error(`no mesh answers at ${base} (${(error as Error).cause ?? error}); is npm start running?`)
    })
    if (!response.ok) throw new Error(`login as ${email} failed: ${response.status} ${await response.text()}`)
    const body = (await response.json()) as { access_token: string; expires_in: number }
    const all = existsSync(tokenFile) ? JSON.parse(readFileSync(tokenFile, "utf8")) : {}
    all[cacheKey] = { token: body.access_token, expiresAt: Date.now() + body.expires_in * 1000 }
    mkdirSync(dirname(tokenFile), { recursive: true })
    writeFileSync(tokenFile, JSON.stringify(all), { mode: 0o600 })
    return body.access_token
  }

  const given = flags.token ?? process.env["MESH_TOKEN"]
  let token: string | undefined = given ?? cached()

  /** `method path` of the mesh's API (`/api/...`), as the signed-in admin; the answer's JSON. */
  const api = async (method: string, path: string, body?: unknown): Promise<unknown> => {
    token ??= await login()
    let response = await send(method, path, token, body)
    if (response.status === 401 && given === undefined) {
      // A kept token the mesh no longer takes (restarted with new keys, say): log in again once.
      token = await login()
      response = await send(method, path, token, body)
    }
    const text = await response.text()
    if (!response.ok) {
      const detail = (() => {
        try {
          const problem = JSON.parse(text) as { detail?: string; errors?: ReadonlyArray<{ path: ReadonlyArray<unknown>; message: string }> }
          // A 400 names each invalid field: say which, not only "Request validation failed".
          if (problem.errors !== undefined && problem.errors.length > 0) {
            return problem.errors.map((issue) => `${issue.path.join(".")}: ${issue.message}`).join("; ")
          }
          return problem.detail ?? text
        } catch {
          return text
        }
      })()
      throw new Error(`${method} ${path}: ${response.status} ${detail}`)
    }
    return text === "" ? undefined : JSON.parse(text)
  }

  /** The admin API: `path` under `/api/admin`. */
  const call = (method: string, path: string, body?: unknown) => api(method, `/api/admin${path}`, body)

  const send = (method: string, path: string, bearer: string, body?: unknown) =>
    fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${bearer}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) })
    }).catch((error: unknown) => {
      throw new Error(`no mesh answers at ${base} (${(error as Error).cause ?? error}); is npm start running?`)
    })

  return { api, call }
}

const print = (value: unknown) => console.log(JSON.stringify(value, null, 2))

/** What `GET /api/admin/live` answers (src/layers/observability/MeshStats.ts), as far as the table reads it. */
interface LiveReport {
  readonly from: string
  readonly to: string
  readonly series: ReadonlyArray<{ series: string; from: string; requests: number; errors: number; perSecond: number; errorRate: number; p50Ms: number | null; p99Ms: number | null }>
  readonly counters: ReadonlyArray<{ name: string; label: string; from: string; count: number }>
  readonly transitions: ReadonlyArray<{ upstream: string; from: string; to: string; at: string }>
}

/** The live report as aligned text: one row per series, then the policy decisions and transitions. */
const liveTable = (report: LiveReport): string => {
  const rows = [
    ["calls to", "from", "calls", "per s", "failed", "p50 ms", "p99 ms"],
    ...report.series.map((entry) => [
      entry.series,
      entry.from,
      String(entry.requests),
      String(entry.perSecond),
      `${entry.errors} (${Math.round(entry.errorRate * 1000) / 10}%)`,
      String(entry.p50Ms ?? ""),
      String(entry.p99Ms ?? "")
    ])
  ]
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)))
  const lines = [`${report.from} to ${report.to}`, ...rows.map((row) => row.map((cell, column) => cell.padEnd(widths[column]!)).join("  ").trimEnd())]
  if (report.series.length === 0) lines.push("no calls yet")
  for (const counter of report.counters) lines.push(`${counter.name} ${counter.label} (${counter.from}): ${counter.count}`)
  for (const transition of report.transitions) lines.push(`breaker ${transition.upstream}: ${transition.from} -> ${transition.to} at ${transition.at}`)
  return lines.join("\n")
}
const list = (value: string | undefined) => value === undefined ? undefined : value.split(",").map((item) => item.trim()).filter(Boolean)
const need = (value: string | undefined, what: string): string => value ?? usage(what)

/** `keys create|list|revoke`: API keys through the auth service. */
const keys = async (api: (method: string, path: string, body?: unknown) => Promise<unknown>, flags: Flags, [action, ...args]: ReadonlyArray<string>) => {
  switch (action) {
    case "create": {
      const name = need(args[0], "keys create <name>, e.g. keys create \"nightly import\"")
      const days = flags["expires-in"] === undefined ? undefined : integer(flags["expires-in"], "--expires-in (days)", { min: 1, max: 3650 })
      const roles = list(flags.roles)
      const issued = (await api("POST", "/api/auth/keys", {
        name,
        ...(flags.user === undefined ? {} : { userId: flags.user }),
        ...(roles === undefined ? {} : { roles }),
        ...(flags.plan === undefined ? {} : { plan: flags.plan }),
        ...(flags["per-minute"] === undefined ? {} : { perMinute: integer(flags["per-minute"], "--per-minute", { min: 1, max: 1_000_000 }) }),
        ...(flags["per-day"] === undefined ? {} : { perDay: integer(flags["per-day"], "--per-day", { min: 1, max: 1_000_000_000 }) }),
        ...(days === undefined ? {} : { expiresAt: new Date(Date.now() + days * 86_400_000).toISOString() })
      })) as { key: string }
      print(issued)
      return console.error("Store the key now: it is not shown again. Send it as  Authorization: ApiKey <key>")
    }
    case "list": {
      const query = new URLSearchParams({ limit: "100", ...(flags.user === undefined ? {} : { userId: flags.user }) })
      return print(await api("GET", `/api/auth/keys?${query}`))
    }
    case "revoke": {
      const id = need(args[0], "keys revoke <id> (npm run mesh -- keys list shows them)")
      await api("DELETE", `/api/auth/keys/${encodeURIComponent(id)}`)
      return console.log(`revoked ${id}; the gateway refuses it within 10 s`)
    }
    case undefined:
      return usage("keys needs create, list or revoke")
    default:
      return usage(`unknown keys command "${action}"`)
  }
}

interface Split {
  readonly stable: string
  readonly canary?: string
  readonly weight: number
  readonly rolledBack?: unknown
}

const run = async (flags: Flags, [command, ...args]: ReadonlyArray<string>) => {
  const { api, call } = session(flags)
  /** A service's split as a new one starts from: its settings kept (auto-rollback, mirroring), its last rollback dropped. */
  const currentSplit = async (service: string) => {
    const splits = (await call("GET", "/traffic")) as Record<string, Split>
    const { rolledBack: _, ...kept } = splits[service] ?? { stable: "blue", weight: 0 }
    return { kept, stable: kept.stable, weight: kept.weight }
  }
  switch (command) {
    case "status":
      return print(await call("GET", "/status"))
    case "traffic": {
      const [service, canary, weight] = args
      if (service === undefined) return print(await call("GET", "/traffic"))
      if (canary === undefined) return print(await call("GET", `/traffic/${service}`))
      const percent = integer(weight, "the weight (percent of users)", { min: 0, max: 100 })
      const { kept, stable } = await currentSplit(service)
      return print(await call("PUT", `/traffic/${service}`, { ...kept, stable: flags.stable ?? stable, canary, weight: percent }))
    }
    case "mirror": {
      const [service, canary, percentage] = args
      if (service === undefined) return usage("mirror <service> [<canary> <percent>], e.g. mirror users green 10")
      if (canary === undefined) return print(await call("GET", `/traffic/${service}/mirror`))
      const percent = integer(percentage, "the percentage of requests mirrored", { min: 0, max: 100 })
      const { kept, stable, weight } = await currentSplit(service)
      // The canary's weight stays as it is when it is the same canary; a new canary starts at 0.
      return print(await call("PUT", `/traffic/${service}`, {
        ...kept,
        stable,
        canary,
        weight: kept.canary === canary ? weight : 0,
        mirror: { percentage: percent }
      }))
    }
    case "faults": {
      const [service, version, percentage] = args
      if (service === undefined || version === undefined) return usage("faults <service> <version> <percent>, e.g. faults users green 50")
      const percent = integer(percentage, "the percentage of calls aborted", { min: 0, max: 100 })
      const { kept, stable } = await currentSplit(service)
      const { [version]: _, ...others } = (kept as { faults?: Record<string, unknown> }).faults ?? {}
      const faults = percent === 0 ? others : { ...others, [version]: { abortPercent: percent, abortStatus: 503 } }
      const { faults: __, ...withoutFaults } = kept as { faults?: unknown }
      return print(await call("PUT", `/traffic/${service}`, { ...withoutFaults, stable, ...(Object.keys(faults).length === 0 ? {} : { faults }) }))
    }
    case "live": {
      const minutes = integer(flags.minutes ?? "5", "--minutes", { min: 1, max: 15 })
      return console.log(liveTable((await call("GET", `/live?minutes=${minutes}`)) as LiveReport))
    }
    case "promote": {
      const [service, version] = args
      if (service === undefined || version === undefined) return usage("promote <service> <version>, e.g. promote users green")
      return print(await call("PUT", `/traffic/${service}`, { stable: version, weight: 0 }))
    }
    case "rollback": {
      const service = need(args[0], "rollback <service>, e.g. rollback users")
      try {
        return print(await call("POST", `/traffic/${service}/rollback`))
      } catch (error) {
        throw new Error(`${(error as Error).message}. To make another version stable: npm run mesh -- promote ${service} blue`)
      }
    }
    case "flags": {
      const [action, name, percentage] = args
      if (action === undefined) return print(await call("GET", "/flags"))
      if (action === "set") {
        const flag = need(name, "flags set <name> <percentage>")
        const percent = integer(percentage, "the percentage", { min: 0, max: 100 })
        // Targets not given on the command line stay as they are.
        const current = ((await call("GET", "/flags")) as Record<string, { users?: Array<string>; roles?: Array<string> }>)[flag]
        const users = list(flags.users) ?? current?.users
        const roles = list(flags.roles) ?? current?.roles
        return print(await call("PUT", `/flags/${flag}`, {
          enabled: true,
          percentage: percent,
          ...(users === undefined ? {} : { users }),
          ...(roles === undefined ? {} : { roles })
        }))
      }
      if (action === "off") {
        const flag = need(name, "flags off <name>")
        const current = (await call("GET", "/flags")) as Record<string, Record<string, unknown>>
        const found = current[flag]
        if (found === undefined) throw new Error(`no flag ${flag} (npm run mesh -- flags lists them)`)
        return print(await call("PUT", `/flags/${flag}`, { ...found, enabled: false }))
      }
      if (action === "delete") {
        const flag = need(name, "flags delete <name>")
        await call("DELETE", `/flags/${flag}`)
        return console.log(`deleted ${flag}`)
      }
      return print(await call("GET", `/flags/${action}`))
    }
    case "gradual": {
      const [worker, percent] = args
      if (worker === undefined) return usage("gradual <worker> <percent>, e.g. gradual users 10")
      return gradual(worker, integer(percent, "the percentage", { min: 1, max: 100 }), { dryRun: flags["dry-run"] ?? false })
    }
    case "keys":
      return keys(api, flags, args)
    case undefined:
      return usage("which command? status, traffic, promote, rollback, flags, gradual or keys")
    default:
      return usage(`unknown command "${command}"`)
  }
}

await main({
  name: "npm run mesh",
  help,
  options: {
    url: { type: "string" },
    token: { type: "string" },
    stable: { type: "string" },
    users: { type: "string" },
    roles: { type: "string" },
    "dry-run": { type: "boolean" },
    user: { type: "string" },
    plan: { type: "string" },
    "per-minute": { type: "string" },
    "per-day": { type: "string" },
    "expires-in": { type: "string" },
    minutes: { type: "string" }
  },
  run: ({ values, positionals }) => run(values, positionals)
})
