/**
 * The `cold` group's host: each `GET /cold/<variant>` loads that variant's
 * bundle into a fresh isolate (Worker Loader; `load`, never a cached `get`)
 * and sends it one request, so the answer's time is a cold start: module
 * evaluation, layer build and first request. With `?evaluate-only`, the
 * isolate answers as soon as the variant's module has been evaluated.
 *
 * The fresh isolate gets the variant's own vars and secrets, its service
 * bindings (to the warm mesh beside this host) and its D1 databases as they
 * are. Bindings an isolate cannot be handed go through this host instead:
 * KV reads and writes to the real namespace (`KvStandIn`), Durable Object
 * calls (`namespace.get(namespace.idFromName(name)).method(...args)`, the
 * only way the mesh uses them) to the real objects (`DurableObjectsStandIn`,
 * through a small module in front of the variant's own); queues and rate
 * limiters are present for the layer to find, and fail if the measured
 * request uses them.
 */
import { WorkerEntrypoint } from "cloudflare:workers"

interface Spec {
  readonly compatibilityDate: string
  readonly path: string
  readonly vars: Record<string, unknown>
  /** Binding name in the variant -> binding name in this host. */
  readonly passed: Record<string, string>
  readonly kv: ReadonlyArray<string>
  /** Durable Object binding name in the variant -> binding name in this host. */
  readonly durableObjects: Record<string, string>
  readonly unavailable: ReadonlyArray<string>
}

type Env = Record<string, unknown> & {
  readonly LOADER: WorkerLoader
  readonly KV_STAND_IN: Fetcher
  readonly DURABLE_OBJECTS_STAND_IN: Fetcher
  readonly UNAVAILABLE: Fetcher
  readonly MESH_CONFIG: KVNamespace
}

export class KvStandIn extends WorkerEntrypoint<Env> {
  get(key: string) {
    return this.env.MESH_CONFIG.get(key)
  }
  put(key: string, value: string, options?: KVNamespacePutOptions) {
    return this.env.MESH_CONFIG.put(key, value, options)
  }
  delete(key: string) {
    return this.env.MESH_CONFIG.delete(key)
  }
  list(options?: KVNamespaceListOptions) {
    return this.env.MESH_CONFIG.list(options)
  }
}

export class DurableObjectsStandIn extends WorkerEntrypoint<Env> {
  call(binding: string, name: string, method: string, args: Array<unknown>) {
    const namespace = this.env[binding] as DurableObjectNamespace
    const stub = namespace.get(namespace.idFromName(name)) as unknown as Record<string, (...args: Array<unknown>) => unknown>
    return stub[method]!(...args)
  }
}

export class Unavailable extends WorkerEntrypoint<Env> {}

/**
 * The fresh isolate's main module: the variant's own (`worker.js`), its
 * Durable Object namespaces made of calls to `DurableObjectsStandIn`.
 */
const front = `
import worker from "./worker.js"
export * from "./worker.js"
const namespace = (standIn, binding) => ({
  idFromName: (name) => ({ name, toString: () => name }),
  get: (id) => new Proxy({}, {
    get: (_, method) => typeof method !== "string" || method === "then" ? undefined : (...args) => standIn.call(binding, id.name, method, args)
  })
})
let env
export default {
  fetch(request, given, ctx) {
    // Module evaluation alone: the variant's module has run, its layer not built.
    if (new URL(request.url).pathname === "/__evaluated") return new Response("evaluated")
    if (env === undefined) {
      const { DURABLE_OBJECTS_STAND_IN, DURABLE_OBJECT_BINDINGS, ...rest } = given
      for (const [name, binding] of Object.entries(JSON.parse(DURABLE_OBJECT_BINDINGS))) rest[name] = namespace(DURABLE_OBJECTS_STAND_IN, binding)
      env = rest
    }
    return worker.fetch(request, env, ctx)
  }
}
`

export default {
  fetch(request: Request, env: Env): Response | Promise<Response> {
    const url = new URL(request.url)
    const match = /^\/cold\/([\w-]+)$/.exec(url.pathname)
    const code = match === null ? undefined : env[`CODE_${match[1]}`]
    if (match === null || typeof code !== "string") return new Response("Not Found", { status: 404 })
    const spec = JSON.parse(env[`SPEC_${match[1]}`] as string) as Spec
    const isolateEnv: Record<string, unknown> = { ...spec.vars }
    for (const [name, hostName] of Object.entries(spec.passed)) isolateEnv[name] = env[hostName]
    for (const name of spec.kv) isolateEnv[name] = env.KV_STAND_IN
    for (const name of spec.unavailable) isolateEnv[name] = env.UNAVAILABLE
    isolateEnv["DURABLE_OBJECTS_STAND_IN"] = env.DURABLE_OBJECTS_STAND_IN
    isolateEnv["DURABLE_OBJECT_BINDINGS"] = JSON.stringify(spec.durableObjects)
    const worker = env.LOADER.load({
      compatibilityDate: spec.compatibilityDate,
      mainModule: "front.js",
      modules: { "front.js": front, "worker.js": code },
      env: isolateEnv
    })
    const path = url.searchParams.has("evaluate-only") ? "/__evaluated" : spec.path
    return worker.getEntrypoint().fetch(new Request(`http://${match[1]}.internal${path}`, { headers: request.headers }))
  }
}
