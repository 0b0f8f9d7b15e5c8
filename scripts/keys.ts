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

const writeLocal = (set: KeySet) => {
  write(keyFile, JSON.stringify(set, null, 2) + "\n")
  const identity = readFileSync(identityFile, "utf8").trim()
  for (const { file, auth } of devVarsFiles) {
    const lines = [`MESH_IDENTITY_SECRET=${identity}`]
    if (auth) lines.push(`AUTH_SIGNING_KEYS='${JSON.stringify(set)}'`)
    write(join(root, file), lines.join("\n") + "\n")
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
export const ensureLocalSecrets = async (): Promise<boolean> => {
  if (existsSync(keyFile) && existsSync(identityFile)) {
    writeLocal(readKeySet())
    return false
  }
  write(identityFile, generateIdentitySecret() + "\n")
  const key = await generateKey()
  writeLocal({ active: key.kid, keys: [key] })
  return true
}

const main = async (args: ReadonlyArray<string>) => {
  const [command, argument] = args.filter((arg) => !arg.startsWith("--"))
  const remote = args.includes("--remote")
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
      if (!current.keys.some((key) => key.kid === argument)) throw new Error(`no key ${argument}`)
      set = { ...current, active: argument! }
      console.log(`${argument} signs from now on`)
      break
    }
    case "retire": {
      const current = readKeySet()
      if (argument === current.active) throw new Error(`${argument} is signing: activate another key first`)
      set = { ...current, keys: current.keys.filter((key) => key.kid !== argument) }
      console.log(`retired ${argument}`)
      break
    }
    default:
      throw new Error("usage: npm run keys -- init | show | push | add | activate <kid> | retire <kid> | rotate [--remote]")
  }
  writeLocal(set)
  if (remote) pushRemote(set)
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await main(process.argv.slice(2))
