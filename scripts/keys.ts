/**
 * `npm run keys`: the mesh's secrets.
 *
 *   npm run keys -- init                 # local secrets (.dev.vars) if missing: identity secret + a signing key
 *   npm run keys -- add                  # new signing key, published in the JWKS, not yet signing
 *   npm run keys -- activate <kid>       # that key signs from now on (old keys still verify)
 *   npm run keys -- retire <kid>         # remove a key: tokens it signed stop verifying
 *   npm run keys -- rotate               # add + activate in one step (local development)
 *   npm run keys -- show                 # the key ids, and which one signs
 *   npm run keys -- push                 # `wrangler secret put` both secrets to every deployed Worker
 *   ... --remote                         # after add/activate/retire/rotate: push the signing keys
 *
 * The signing key set lives in .keys/auth-signing-keys.json (git-ignored; keep it
 * somewhere safe for production, Cloudflare never gives a secret back). Rotate in
 * production in steps: `add`, wait longer than the gateways' JWKS max age (5 min)
 * so every gateway holds the new key, then `activate`; `retire` the old key once
 * the longest token lifetime (5 minutes) has passed.
 */
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { main, usage } from "./cli.ts"
import { workers } from "./mesh.ts"

export interface PrivateJwk {
  readonly kty: "EC"
  readonly crv: "P-256"
  readonly x: string
  readonly y: string
  readonly d: string
  readonly kid: string
  readonly alg: "ES256"
}

export interface KeySet {
  readonly active: string
  readonly keys: ReadonlyArray<PrivateJwk>
}

/** A new ES256 signing key, as a private JWK with a fresh `kid`. */
export const generateKey = async (): Promise<PrivateJwk> => {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])
  const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey)
  const kid = `k${new Date().toISOString().slice(0, 10).replaceAll("-", "")}-${crypto.randomUUID().slice(0, 8)}`
  return { kty: "EC", crv: "P-256", x: jwk.x!, y: jwk.y!, d: jwk.d!, kid, alg: "ES256" }
}

/** A random secret for the mesh's identity assertions (HMAC-SHA256). */
export const generateIdentitySecret = (): string =>
  Buffer.from(crypto.getRandomValues(new Uint8Array(32))).toString("base64url")

const root = join(import.meta.dirname, "..")
const keyFile = join(root, ".keys/auth-signing-keys.json")
const identityFile = join(root, ".keys/mesh-identity-secret")

/** Every Worker's config directory gets a .dev.vars; the auth Worker's also has the signing keys. */
const devVarsFiles = workers.map((worker) => ({
  file: join(dirname(worker.config), ".dev.vars"),
  config: worker.config,
  auth: worker.name === "auth"
}))

const readKeySet = (): KeySet => {
  if (!existsSync(keyFile)) throw new Error(`no key set at ${keyFile}: run \`npm run keys -- init\` first`)
  return JSON.parse(readFileSync(keyFile, "utf8")) as KeySet
}

const write = (file: string, contents: string) => {
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, contents, { mode: 0o600 })
}

/** The first line of the block of a .dev.vars that this script and `npm start` own. */
const managedStart = "# Managed by npm start and npm run keys: rewritten on each start. Your own lines go below the end line and are kept."
const managedEnd = "# End of the managed block."

/**
 * Writes a .dev.vars: the managed block first, then every line the developer
 * had outside it (dotenv takes the last value of a name, so theirs win).
 * Lines of an older file that set a managed name are the managed block's.
 */
export const mergeDevVars = (existing: string, managed: Record<string, string>): string => {
  const lines = existing.split("\n")
  const from = lines.indexOf(managedStart)
  const to = lines.indexOf(managedEnd)
  const own = from >= 0 && to > from
    ? [...lines.slice(0, from), ...lines.slice(to + 1)]
    : lines.filter((line) => !Object.keys(managed).some((name) => line.startsWith(`${name}=`)))
  const kept = own.join("\n").trim()
  const block = [managedStart, ...Object.entries(managed).map(([name, value]) => `${name}=${value}`), managedEnd]
  return block.join("\n") + "\n" + (kept === "" ? "" : kept + "\n")
}

interface LocalOptions {
  /** OTLP_ENDPOINT for every Worker, for this start only. */
  readonly otlpEndpoint?: string | undefined
}

const writeLocal = (set: KeySet, options: LocalOptions = {}) => {
  write(keyFile, JSON.stringify(set, null, 2) + "\n")
  const identity = readFileSync(identityFile, "utf8").trim()
  for (const { file, auth } of devVarsFiles) {
    const managed: Record<string, string> = { MESH_IDENTITY_SECRET: identity }
    if (auth) managed["AUTH_SIGNING_KEYS"] = `'${JSON.stringify(set)}'`
    if (options.otlpEndpoint !== undefined) managed["OTLP_ENDPOINT"] = options.otlpEndpoint
    const path = join(root, file)
    write(path, mergeDevVars(existsSync(path) ? readFileSync(path, "utf8") : "", managed))
  }
}

const putSecret = (name: string, value: string, config: string) =>
  execFileSync(join(root, "node_modules/.bin/wrangler"), ["secret", "put", name, "-c", config], {
    cwd: root,
    input: value,
    stdio: ["pipe", "inherit", "inherit"]
  })

const pushRemote = (set: KeySet) => putSecret("AUTH_SIGNING_KEYS", JSON.stringify(set), "src/services/auth/wrangler.toml")

/** The wrangler config of each Worker, beside the .dev.vars that holds its local secrets. */
const configs = devVarsFiles.map(({ config, auth }) => ({ config, auth }))

/** Creates the local secrets if they are missing; returns whether it created them. */
export const ensureLocalSecrets = async (options: LocalOptions = {}): Promise<boolean> => {
  if (existsSync(keyFile) && existsSync(identityFile)) {
    writeLocal(readKeySet(), options)
    return false
  }
  write(identityFile, generateIdentitySecret() + "\n")
  const key = await generateKey()
  writeLocal({ active: key.kid, keys: [key] }, options)
  return true
}

const help = `
npm run keys: the mesh's secrets, local (.keys/, each Worker's .dev.vars) and deployed.

  npm run keys -- init              local secrets, if missing: identity secret + a signing key
  npm run keys -- show              the signing key ids, and which one signs
  npm run keys -- add               a new signing key: published in the JWKS, not signing yet
  npm run keys -- activate <kid>    that key signs from now on (the others still verify)
  npm run keys -- retire <kid>      remove a key: tokens it signed stop verifying
  npm run keys -- rotate            add + activate in one step (local development)
  npm run keys -- push              wrangler secret put both secrets to every deployed Worker
  ... --remote                      after add, activate, retire or rotate: push the signing keys

In production rotate in steps: add, wait the gateways' JWKS max age (5 min), activate,
wait the longest token life (5 min), retire the old key. A running \`npm start\` uses
changed keys once restarted.
`

const keyIn = (set: KeySet, kid: string | undefined, command: string): string => {
  if (kid === undefined) return usage(`${command} needs a key id (npm run keys -- show lists them)`)
  if (!set.keys.some((key) => key.kid === kid)) throw new Error(`no key ${kid} (npm run keys -- show lists them)`)
  return kid
}

const run = async (command: string | undefined, argument: string | undefined, remote: boolean) => {
  let set: KeySet
  switch (command) {
    case "init":
      console.log((await ensureLocalSecrets()) ? "created local secrets" : "local secrets already exist")
      return
    case "push": {
      const identity = readFileSync(identityFile, "utf8").trim()
      for (const { config, auth } of configs) {
        putSecret("MESH_IDENTITY_SECRET", identity, config)
        if (auth) pushRemote(readKeySet())
      }
      return
    }
    case "show":
      set = readKeySet()
      for (const key of set.keys) console.log(`${key.kid}${key.kid === set.active ? "  (signing)" : ""}`)
      return
    case "add":
    case "rotate": {
      const current = readKeySet()
      const key = await generateKey()
      set = { active: command === "rotate" ? key.kid : current.active, keys: [...current.keys, key] }
      console.log(`added ${key.kid}${command === "rotate" ? ", now signing" : ", published, not signing yet"}`)
      break
    }
    case "activate": {
      const current = readKeySet()
      const kid = keyIn(current, argument, "activate")
      set = { ...current, active: kid }
      console.log(`${kid} signs from now on`)
      break
    }
    case "retire": {
      const current = readKeySet()
      const kid = keyIn(current, argument, "retire")
      if (kid === current.active) throw new Error(`${kid} is signing: activate another key first`)
      set = { ...current, keys: current.keys.filter((key) => key.kid !== kid) }
      console.log(`retired ${kid}`)
      break
    }
    case undefined:
      return usage("which command? init, show, add, activate <kid>, retire <kid>, rotate or push")
    default:
      return usage(`unknown command "${command}"`)
  }
  writeLocal(set)
  if (remote) pushRemote(set)
  else console.log("local .dev.vars updated: a running npm start uses them once restarted")
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main({
    name: "npm run keys",
    help,
    options: { remote: { type: "boolean" } },
    run: ({ values, positionals }) => {
      if (positionals.length > 2) usage(`unexpected argument "${positionals[2]}"`)
      return run(positionals[0], positionals[1], values.remote ?? false)
    }
  })
}
