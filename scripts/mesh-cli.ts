/**
 * `npm run mesh`: drive a mesh's traffic splits and feature flags through its
 * gateway's admin API (src/services/gateway/admin.ts).
 *
 *   npm run mesh -- status
 *   npm run mesh -- traffic users green 20        # 20% of users to green (stable stays as it is, else blue)
 *   npm run mesh -- traffic users green 100 --stable blue
 *   npm run mesh -- promote users green           # green becomes the stable version, no canary
 *   npm run mesh -- rollback users                # weight 0 for the canary (routers follow within their cache time)
 *   npm run mesh -- flags                          # every flag
 *   npm run mesh -- flags set new-checkout 10      # on for 10% of users (its user and role targets kept)
 *   npm run mesh -- flags set new-checkout 0 --users <id>,<id> --roles admin
 *   npm run mesh -- flags off new-checkout         # the kill switch
 *   npm run mesh -- flags delete new-checkout
 *
 * Where: `--url` or MESH_URL (default http://127.0.0.1:8787, the mesh of
 * `npm start`). Who: `--token` or MESH_TOKEN, else MESH_EMAIL and
 * MESH_PASSWORD to log in; against 127.0.0.1 it logs in as the demo admin.
 */
import { parseArgs } from "node:util"

const { values: flags, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    url: { type: "string" },
    token: { type: "string" },
    stable: { type: "string" },
    users: { type: "string" },
    roles: { type: "string" }
  }
})

const base = (flags.url ?? process.env["MESH_URL"] ?? "http://127.0.0.1:8787").replace(/\/$/, "")
const isLocal = /^https?:\/\/(127\.0\.0\.1|localhost)(:\d+)?$/.test(base)

const fail = (message: string): never => {
  console.error(message)
  process.exit(1)
}

const token = async (): Promise<string> => {
  const given = flags.token ?? process.env["MESH_TOKEN"]
  if (given !== undefined) return given
  const email = process.env["MESH_EMAIL"] ?? (isLocal ? "ada@meshwork.dev" : undefined)
  const password = process.env["MESH_PASSWORD"] ?? (isLocal ? "ada-local-password" : undefined)
  if (email === undefined || password === undefined) return fail("Give --token, MESH_TOKEN, or MESH_EMAIL and MESH_PASSWORD")
  const response = await fetch(`${base}/api/auth/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ email, password })
  })
  if (!response.ok) return fail(`Login as ${email} failed: ${response.status} ${await response.text()}`)
  return ((await response.json()) as { access_token: string }).access_token
}

const call = async (method: string, path: string, body?: unknown): Promise<unknown> => {
  const response = await fetch(`${base}/api/admin${path}`, {
    method,
    headers: { authorization: `Bearer ${await token()}`, ...(body === undefined ? {} : { "content-type": "application/json" }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await response.text()
  if (!response.ok) return fail(`${method} ${path}: ${response.status} ${text}`)
  return text === "" ? undefined : JSON.parse(text)
}

const print = (value: unknown) => console.log(JSON.stringify(value, null, 2))
const number = (value: string | undefined, what: string) => {
  const parsed = Number(value)
  return value === undefined || !Number.isFinite(parsed) ? fail(`${what} must be a number`) : parsed
}
const list = (value: string | undefined) => value === undefined ? undefined : value.split(",").map((item) => item.trim()).filter(Boolean)

const [command, ...args] = positionals
switch (command) {
  case "status":
    print(await call("GET", "/status"))
    break
  case "traffic": {
    const [service, canary, weight] = args
    if (service === undefined) {
      print(await call("GET", "/traffic"))
      break
    }
    if (canary === undefined) {
      print(await call("GET", `/traffic/${service}`))
      break
    }
    const current = (await call("GET", "/traffic")) as Record<string, { stable: string }>
    const stable = flags.stable ?? current[service]?.stable ?? "blue"
    print(await call("PUT", `/traffic/${service}`, { stable, canary, weight: number(weight, "weight") }))
    break
  }
  case "promote": {
    const [service, version] = args
    if (service === undefined || version === undefined) fail("promote <service> <version>")
    print(await call("PUT", `/traffic/${service}`, { stable: version, weight: 0 }))
    break
  }
  case "rollback":
    print(await call("POST", `/traffic/${args[0] ?? fail("rollback <service>")}/rollback`))
    break
  case "flags": {
    const [action, name, percentage] = args
    if (action === undefined) print(await call("GET", "/flags"))
    else if (action === "set") {
      if (name === undefined) fail("flags set <name> <percentage>")
      // Targets not given on the command line stay as they are.
      const current = ((await call("GET", "/flags")) as Record<string, { users?: Array<string>; roles?: Array<string> }>)[name!]
      const users = list(flags.users) ?? current?.users
      const roles = list(flags.roles) ?? current?.roles
      print(await call("PUT", `/flags/${name}`, {
        enabled: true,
        percentage: number(percentage, "percentage"),
        ...(users === undefined ? {} : { users }),
        ...(roles === undefined ? {} : { roles })
      }))
    } else if (action === "off") {
      const current = (await call("GET", "/flags")) as Record<string, Record<string, unknown>>
      const flag = current[name ?? fail("flags off <name>")] ?? fail(`No flag ${name}`)
      print(await call("PUT", `/flags/${name}`, { ...flag, enabled: false }))
    } else if (action === "delete") {
      await call("DELETE", `/flags/${name ?? fail("flags delete <name>")}`)
      console.log(`deleted ${name}`)
    } else print(await call("GET", `/flags/${action}`))
    break
  }
  default:
    fail("npm run mesh -- status | traffic <service> <canary> <weight> | promote <service> <version> | rollback <service> | flags [set|off|delete] ...")
}
