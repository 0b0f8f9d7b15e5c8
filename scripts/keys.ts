/**
 * `npm run keys`: the mesh's keys, local (.keys/, each Worker's .dev.vars)
 * and deployed. Two kinds, neither shared between Workers:
 * - the auth service's token signing keys (`AUTH_SIGNING_KEYS`, published in
 *   its JWKS);
 * - each Worker's own mesh identity key (`MESH_SIGNING_KEY`), whose public
 *   half every Worker knows (`MESH_PUBLIC_KEYS`): see docs/security.md.
 *
 * The key files live in .keys/ (git-ignored; keep them somewhere safe for
 * production, Cloudflare never gives a secret back). See `--help`.
 */
import { execFileSync } from "node:child_process"
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { main, usage } from "./cli.ts"
import { workers } from "./mesh.ts"
import type { PrivateJwk as EcPrivateJwk } from "../src/layers/security/Jws.ts"

/** A token signing key: an ES256 private JWK. */
export interface PrivateJwk extends EcPrivateJwk {
  readonly alg: "ES256"
}

export interface KeySet {
  readonly active: string
  readonly keys: ReadonlyArray<PrivateJwk>
}

/** A mesh identity key: an ES256 private JWK naming the Worker it speaks for. */
export interface MeshKey extends EcPrivateJwk {
  readonly worker: string
}

/** Every Worker's mesh keys: the one it signs with, and the ones published for it. */
export type MeshKeyStore = Record<string, { readonly active: string; readonly keys: ReadonlyArray<MeshKey> }>

const stamp = () => `${new Date().toISOString().slice(0, 10).replaceAll("-", "")}-${crypto.randomUUID().slice(0, 8)}`

const newPair = async () => {
  const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, true, ["sign", "verify"])
  const jwk = await crypto.subtle.exportKey("jwk", pair.privateKey)
  return { x: jwk.x!, y: jwk.y!, d: jwk.d! }
}

/** A new ES256 token signing key, as a private JWK with a fresh `kid`. */
export const generateKey = async (): Promise<PrivateJwk> => ({ kty: "EC", crv: "P-256", ...(await newPair()), kid: `k${stamp()}`, alg: "ES256" })

/** A new mesh identity key for `worker` (its kid names the Worker). */
export const generateMeshKey = async (worker: string): Promise<MeshKey> =>
  ({ kty: "EC", crv: "P-256", ...(await newPair()), kid: `${worker}-${stamp()}`, worker })

/** The public half of every key in the store, by key id: what every Worker gets as MESH_PUBLIC_KEYS. */
export const publicKeysOf = (keys: ReadonlyArray<MeshKey>) =>
  Object.fromEntries(keys.map(({ kid, kty, crv, x, y, worker }) => [kid, { kty, crv, x, y, worker }]))

/** The mesh name of a deployed Worker: both versions of a service (users, users-green) are one name with one key. */
export const meshNameOf = (worker: string): string => worker.replace(/-green$/, "")

/** Fresh mesh keys, one per name: for tests and benchmarks. */
export const generateMeshKeys = async (names: ReadonlyArray<string>) => {
  const keys = await Promise.all(names.map(generateMeshKey))
  return { signing: Object.fromEntries(keys.map((key) => [key.worker, key])), published: publicKeysOf(keys) }
}

const root = join(import.meta.dirname, "..")
const tokenKeyFile = join(root, ".keys/auth-signing-keys.json")
const meshKeyFile = join(root, ".keys/mesh-keys.json")
// The shared HMAC secret of earlier versions: removed wherever it is found.
const legacySecretFile = join(root, ".keys/mesh-identity-secret")

const meshNames = [...new Set(workers.map((worker) => meshNameOf(worker.name)))]

const readJson = <A>(file: string): A => {
  if (!existsSync(file)) throw new Error(`no keys at ${file}: run \`npm run keys -- init\` first`)
  return JSON.parse(readFileSync(file, "utf8")) as A
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
    : lines.filter((line) => !["MESH_IDENTITY_SECRET", ...Object.keys(managed)].some((name) => line.startsWith(`${name}=`)))
  const kept = own.join("\n").trim()
  const block = [managedStart, ...Object.entries(managed).map(([name, value]) => `${name}=${value}`), managedEnd]
  return block.join("\n") + "\n" + (kept === "" ? "" : kept + "\n")
}

interface LocalOptions {
  /** OTLP_ENDPOINT for every Worker, for this start only. */
  readonly otlpEndpoint?: string | undefined
}

const activeKey = (store: MeshKeyStore, name: string): MeshKey => {
  const set = store[name]
  const key = set?.keys.find((candidate) => candidate.kid === set.active)
  if (key === undefined) throw new Error(`${name} has no active mesh key: run \`npm run keys -- rotate --worker ${name}\``)
  return key
}

const allMeshKeys = (store: MeshKeyStore) => Object.values(store).flatMap((set) => set.keys)

/**
 * Where the local mesh differs from a deployed one, by Worker: admin changes (splits, rollbacks,
 * flags, revoked API keys) take effect within a second, not the deployed 10 s, so a change tried
 * in the console or with `npm run mesh` shows at once; the console's live figures lag by a second,
 * not 10; faults an admin sets on a split are injected; and every Worker keeps its traces in the
 * mesh for the console (KEEP_TRACES).
 */
const localVars: Record<string, Record<string, string>> = {
  gateway: { API_KEY_CACHE_SECONDS: "1", LIVE_STATS_INTERVAL_SECONDS: "1" },
  // Faults an admin sets on a split (the console's) take effect locally; deployed, FAULT_INJECTION is off.
  router: { TRAFFIC_CACHE_SECONDS: "1", LIVE_STATS_INTERVAL_SECONDS: "1", FAULT_INJECTION: "true" },
  sessions: { FLAGS_CACHE_SECONDS: "1" }
}

/** Workers that keep their spans in the mesh for the console (KEEP_TRACES; deployed: off): all but docs, which binds no MESH_STATS. */
export const keepsTraces = (worker: string) => worker !== "docs"

/** Writes the key files and every Worker's .dev.vars (users and users-green share one, and one key). */
const writeLocal = (tokens: KeySet, mesh: MeshKeyStore, options: LocalOptions = {}) => {
  write(tokenKeyFile, JSON.stringify(tokens, null, 2) + "\n")
  write(meshKeyFile, JSON.stringify(mesh, null, 2) + "\n")
  const published = JSON.stringify(publicKeysOf(allMeshKeys(mesh)))
  for (const worker of workers) {
    const managed: Record<string, string> = {
      MESH_SIGNING_KEY: `'${JSON.stringify(activeKey(mesh, meshNameOf(worker.name)))}'`,
      MESH_PUBLIC_KEYS: `'${published}'`
    }
    if (worker.name === "auth") managed["AUTH_SIGNING_KEYS"] = `'${JSON.stringify(tokens)}'`
    Object.assign(managed, localVars[worker.name])
    if (keepsTraces(worker.name)) managed["KEEP_TRACES"] = "true"
    if (options.otlpEndpoint !== undefined) managed["OTLP_ENDPOINT"] = options.otlpEndpoint
    const path = join(root, dirname(worker.config), ".dev.vars")
    write(path, mergeDevVars(existsSync(path) ? readFileSync(path, "utf8") : "", managed))
  }
}

const putSecret = (name: string, value: string, config: string) =>
  execFileSync(join(root, "node_modules/.bin/wrangler"), ["secret", "put", name, "-c", config], {
    cwd: root,
    input: value,
    stdio: ["pipe", "inherit", "inherit"]
  })

/** Pushes what changed to the deployed Workers: the token keys to auth; mesh keys (each its own, and the public set) to all. */
const pushRemote = (tokens: KeySet | undefined, mesh: MeshKeyStore | undefined) => {
  if (tokens !== undefined) putSecret("AUTH_SIGNING_KEYS", JSON.stringify(tokens), "src/services/auth/wrangler.toml")
  if (mesh === undefined) return
  const published = JSON.stringify(publicKeysOf(allMeshKeys(mesh)))
  for (const worker of workers) {
    putSecret("MESH_PUBLIC_KEYS", published, worker.config)
    putSecret("MESH_SIGNING_KEY", JSON.stringify(activeKey(mesh, meshNameOf(worker.name))), worker.config)
  }
}

/** Creates the local keys that are missing and writes every .dev.vars; returns whether it created any. */
export const ensureLocalSecrets = async (options: LocalOptions = {}): Promise<boolean> => {
  let created = false
  let tokens: KeySet
  if (existsSync(tokenKeyFile)) tokens = readJson<KeySet>(tokenKeyFile)
  else {
    const key = await generateKey()
    tokens = { active: key.kid, keys: [key] }
    created = true
  }
  const mesh: MeshKeyStore = existsSync(meshKeyFile) ? { ...readJson<MeshKeyStore>(meshKeyFile) } : {}
  for (const name of meshNames) {
    if (mesh[name] !== undefined) continue
    const key = await generateMeshKey(name)
    mesh[name] = { active: key.kid, keys: [key] }
    created = true
  }
  rmSync(legacySecretFile, { force: true })
  writeLocal(tokens, mesh, options)
  return created
}

const help = `
npm run keys: the mesh's keys, local (.keys/, each Worker's .dev.vars) and deployed.

Token signing keys (the auth service's, published in its JWKS):
  npm run keys -- show                    the key ids, and which one signs
  npm run keys -- add                     a new key: published, not signing yet
  npm run keys -- activate <kid>          that key signs from now on (the others still verify)
  npm run keys -- retire <kid>            remove a key: what it signed stops verifying
  npm run keys -- rotate                  add + activate in one step (local development)

Each Worker's mesh identity key (the same commands with --worker):
  npm run keys -- show --worker users     users' key ids
  npm run keys -- add --worker users      a new key for users: every Worker learns it, users does not sign with it yet
  npm run keys -- activate <kid>          (a mesh key's kid names its Worker: users-20261203-...)
  npm run keys -- retire <kid>
  npm run keys -- rotate --worker users

  npm run keys -- init                    the local keys that are missing
  npm run keys -- push                    wrangler secret put every key to every deployed Worker
  ... --remote                            after add, activate, retire or rotate: push what changed

Workers: ${meshNames.join(", ")}. In production rotate in steps, each pushed with --remote: add,
wait until every Worker runs with the new public key (token keys: the gateways' JWKS max age,
5 min), activate, wait the longest lifetime of what the old key signed (tokens 5 min, mesh
assertions 60 s), retire the old key. A running \`npm start\` uses changed keys once restarted.
`

const run = async (command: string | undefined, argument: string | undefined, options: { remote: boolean; worker: string | undefined }) => {
  if (options.worker !== undefined && !meshNames.includes(options.worker)) {
    return usage(`no Worker "${options.worker}" (one of ${meshNames.join(", ")})`)
  }
  if (command === "init") {
    console.log((await ensureLocalSecrets()) ? "created the missing local keys" : "local keys already exist")
    return
  }
  if (command === "push") {
    pushRemote(readJson<KeySet>(tokenKeyFile), readJson<MeshKeyStore>(meshKeyFile))
    return
  }
  let tokens = readJson<KeySet>(tokenKeyFile)
  let mesh = readJson<MeshKeyStore>(meshKeyFile)
  const meshKeyOwner = (kid: string) => Object.entries(mesh).find(([, set]) => set.keys.some((key) => key.kid === kid))?.[0]
  const needKid = (verb: string): string => {
    if (argument === undefined) return usage(`${verb} needs a key id (npm run keys -- show [--worker <name>] lists them)`)
    if (!tokens.keys.some((key) => key.kid === argument) && meshKeyOwner(argument) === undefined) {
      throw new Error(`no key ${argument} (npm run keys -- show [--worker <name>] lists them)`)
    }
    return argument
  }
  let changed: "tokens" | "mesh"
  switch (command) {
    case "show": {
      const set = options.worker === undefined ? tokens : mesh[options.worker]!
      for (const key of set.keys) console.log(`${key.kid}${key.kid === set.active ? "  (signing)" : ""}`)
      return
    }
    case "add":
    case "rotate": {
      const signs = command === "rotate"
      if (options.worker === undefined) {
        const key = await generateKey()
        tokens = { active: signs ? key.kid : tokens.active, keys: [...tokens.keys, key] }
        console.log(`added ${key.kid}${signs ? ", now signing" : ", published, not signing yet"}`)
        changed = "tokens"
      } else {
        const set = mesh[options.worker]!
        const key = await generateMeshKey(options.worker)
        mesh = { ...mesh, [options.worker]: { active: signs ? key.kid : set.active, keys: [...set.keys, key] } }
        console.log(`added ${key.kid}${signs ? `, ${options.worker} signs with it now` : ", published to every Worker, not signing yet"}`)
        changed = "mesh"
      }
      break
    }
    case "activate":
    case "retire": {
      const kid = needKid(command)
      const owner = meshKeyOwner(kid)
      const set = owner === undefined ? tokens : mesh[owner]!
      if (command === "retire" && kid === set.active) throw new Error(`${kid} is signing: activate another key first`)
      const next = command === "activate" ? { ...set, active: kid } : { ...set, keys: set.keys.filter((key) => key.kid !== kid) }
      if (owner === undefined) {
        tokens = next as KeySet
        changed = "tokens"
      } else {
        mesh = { ...mesh, [owner]: next as MeshKeyStore[string] }
        changed = "mesh"
      }
      console.log(command === "activate" ? `${kid} signs from now on` : `retired ${kid}`)
      break
    }
    case undefined:
      return usage("which command? init, show, add, activate <kid>, retire <kid>, rotate or push")
    default:
      return usage(`unknown command "${command}"`)
  }
  writeLocal(tokens, mesh)
  if (options.remote) pushRemote(changed === "tokens" ? tokens : undefined, changed === "mesh" ? mesh : undefined)
  else console.log("local .dev.vars updated: a running npm start uses them once restarted")
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main({
    name: "npm run keys",
    help,
    options: { remote: { type: "boolean" }, worker: { type: "string" } },
    run: ({ values, positionals }) => {
      if (positionals.length > 2) usage(`unexpected argument "${positionals[2]}"`)
      return run(positionals[0], positionals[1], { remote: values.remote ?? false, worker: values.worker })
    }
  })
}
