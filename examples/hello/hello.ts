/**
 * The hello Worker, built only on `meshwork`: `GET /hello/<name>` asks the
 * greeter Worker for a greeting through a typed client (retried by the
 * `Retries` policy), counts the visits of each name in a Durable Object, and
 * answers both. Anything else is a 404 problem.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { HttpApiClient } from "effect/http-api"
import { Bindings, DurableObjects, Problem, Retries, ServiceClient, Worker } from "meshwork"
import { GreeterApi } from "./api.ts"

/** Visits per name, in the object's own SQLite storage. */
class VisitStore extends Context.Service<VisitStore, {
  readonly visit: (name: string) => Effect.Effect<number>
}>()("examples/hello/VisitStore") {
  static readonly layer = Layer.effect(
    VisitStore,
    DurableObjects.State.useSync((state) => {
      const sql = state.storage.sql
      sql.exec("CREATE TABLE IF NOT EXISTS visits (name TEXT PRIMARY KEY, count INTEGER NOT NULL)")
      return VisitStore.of({
        visit: (name) =>
          Effect.sync(() =>
            sql.exec<{ count: number }>(
              "INSERT INTO visits (name, count) VALUES (?, 1) ON CONFLICT (name) DO UPDATE SET count = count + 1 RETURNING count",
              name
            ).one().count
          )
      })
    })
  )
}

/** One object counts every name's visits; bound as VISITS. */
export class Visits extends DurableObjects.make({ name: "Visits", layer: VisitStore.layer }) {
  visit(name: string): Promise<number> {
    return this.run(VisitStore.use((store) => store.visit(name)))
  }
}

/** The greeter, over the GREETER service binding: 1 s per attempt, two attempts for reads. */
class Greeter extends Context.Service<Greeter, HttpApiClient.ForApi<typeof GreeterApi>>()("examples/hello/Greeter") {
  static readonly layer = Layer.effect(
    Greeter,
    ServiceClient.make(GreeterApi, "GREETER", { timeoutMs: 1_000, policy: Retries.policy("greeter", { attempts: 2 }) })
  )
}

/** The Visits object, through the VISITS binding (checked once, when the layer is built). */
class VisitCounter extends Context.Service<VisitCounter, {
  readonly visit: (name: string) => Effect.Effect<number>
}>()("examples/hello/VisitCounter") {
  static readonly layer = Layer.effect(
    VisitCounter,
    Effect.map(Bindings.durableObject("VISITS"), (namespace) =>
      VisitCounter.of({
        visit: (name) =>
          Effect.promise(() => {
            // A stub is I/O of the request that made it: one per call, never kept in the layer.
            const visits = namespace.get(namespace.idFromName("visits")) as unknown as Pick<Visits, "visit">
            return visits.visit(name)
          })
      }))
  )
}

export default Worker.make({
  name: "hello",
  layer: Layer.mergeAll(Greeter.layer, VisitCounter.layer, Retries.layer),
  fetch: (request) =>
    Effect.gen(function*() {
      const name = /^\/hello\/([A-Za-z0-9_-]{1,64})$/.exec(new URL(request.url).pathname)?.[1]
      if (request.method !== "GET" || name === undefined) {
        return yield* new Problem.NotFound({ detail: "Try GET /hello/<name>" })
      }
      const greeter = yield* Greeter
      const { message } = yield* greeter.greeter.greet({ params: { name } }).pipe(
        Effect.mapError(() => new Problem.BadGateway({ service: "greeter" }))
      )
      const visits = yield* VisitCounter.use((counter) => counter.visit(name))
      return Response.json({ message, visits })
    })
})
