/** The sessions API's handlers: a session is its creator's alone. */
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import * as HttpApiMiddleware from "effect/http-api/HttpApiMiddleware"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import { FeatureFlags, Health, Identity, Problem, StateCoordinator } from "meshwork"
import { uuidv7 } from "../shared/Ids.ts"
import {
  InvalidSessionChange,
  SessionNotFound,
  SessionPreconditionFailed,
  SessionPreconditionRequired,
  SessionsApi
} from "./api.ts"
import { productLookups } from "../products/client.ts"
import type { Session } from "./api.ts"
import { emptySession, Sessions } from "./Sessions.ts"

/** Only users have sessions; the owner is the user's id, so nobody else's calls find them. */
const owner = Effect.map(
  Identity.authorize((identity) => identity.kind === "user", "Sessions belong to users"),
  (identity) => identity.kind === "user" ? identity.sub : ""
)

const view = (entry: StateCoordinator.Entry<Session>) =>
  HttpApiSchema.withHeaders({
    body: { id: entry.key, version: entry.version, ...entry.state },
    headers: { etag: StateCoordinator.etag(entry.version) }
  })

const precondition = (header: string | undefined) =>
  Effect.try({
    try: () => StateCoordinator.parseIfMatch(header),
    catch: (error) => new Problem.BadRequest({ detail: (error as Error).message })
  })

type CoordinatorError =
  | StateCoordinator.StateNotFound
  | StateCoordinator.StateExists
  | StateCoordinator.VersionMismatch
  | StateCoordinator.InvalidChange
  | StateCoordinator.StateUnavailable
type ProblemOf<E> = E extends StateCoordinator.StateNotFound ? SessionNotFound
  : E extends StateCoordinator.VersionMismatch ? SessionPreconditionFailed
  : E extends StateCoordinator.InvalidChange ? InvalidSessionChange
  : Problem.ServiceUnavailable

/** The coordinator's errors as this API's problems. */
const asProblems = (sessionId: string) => <A, E extends CoordinatorError>(effect: Effect.Effect<A, E>) =>
  effect.pipe(
    Effect.tapError((error) =>
      error._tag === "meshwork/StateCoordinator/StateUnavailable" ? Effect.logWarning("Session object unavailable", error.cause) : Effect.void
    ),
    Effect.mapError((error): ProblemOf<E> => {
      switch (error._tag) {
        case "meshwork/StateCoordinator/StateNotFound":
          return new SessionNotFound({ sessionId }) as ProblemOf<E>
        case "meshwork/StateCoordinator/VersionMismatch":
          return new SessionPreconditionFailed({ sessionId, currentVersion: error.currentVersion }) as ProblemOf<E>
        case "meshwork/StateCoordinator/InvalidChange":
          return new InvalidSessionChange({ sessionId, reason: error.reason }) as ProblemOf<E>
        case "meshwork/StateCoordinator/StateExists":
          return new Problem.ServiceUnavailable({ detail: "A fresh session id was already taken" }) as ProblemOf<E>
        case "meshwork/StateCoordinator/StateUnavailable":
          return new Problem.ServiceUnavailable({ detail: "The session store could not be reached" }) as ProblemOf<E>
      }
    })
  )

const SessionsHandlers = HttpApiBuilder.group(
  SessionsApi,
  "sessions",
  Effect.fn(function*(handlers) {
    const sessions = yield* Sessions
    const flags = yield* FeatureFlags
    // Products per upstream call when a cart is enriched (the benchmark sets 1 to compare).
    const lookupBatchSize = yield* Config.Int("CART_LOOKUP_BATCH_SIZE").pipe(Config.withDefault(10))
    return handlers
      .handle("create", Effect.fnUntraced(function*({ payload }) {
        const user = yield* owner
        const id = yield* uuidv7
        const entry = yield* asProblems(id)(sessions.create(id, user, { ...emptySession, ...payload }))
        const { body, headers } = view(entry)
        return HttpApiSchema.withHeaders({ body, headers: { ...headers, location: `/api/sessions/${id}` } })
      }))
      .handle("get", Effect.fnUntraced(function*({ params }) {
        const user = yield* owner
        return view(yield* asProblems(params.id)(sessions.get(params.id, user)))
      }))
      .handle("cart", Effect.fnUntraced(function*({ params }) {
        const user = yield* owner
        const entry = yield* asProblems(params.id)(sessions.get(params.id, user))
        // One batched lookup for the whole cart: its lines' products in calls of at most 10 ids.
        // All lookups start in one turn, so a window of 0 collects them.
        const product = yield* productLookups({ window: 0, maxBatchSize: lookupBatchSize })
        const lines = yield* Effect.forEach(
          Object.entries(entry.state.cart),
          ([productId, quantity]) =>
            product(productId).pipe(
              Effect.catchTag("ProductNotFound", () => Effect.succeed(null)),
              Effect.map((found) => ({ productId, quantity, product: found }))
            ),
          { concurrency: "unbounded" }
        )
        const identity = yield* Identity.CurrentIdentity
        const checkout = (yield* flags.isOn("new-checkout", identity)) ? "new" as const : "classic" as const
        return { sessionId: entry.key, version: entry.version, lines, checkout }
      }))
      .handle("update", Effect.fnUntraced(function*({ params, headers, payload }) {
        const user = yield* owner
        const ifMatch = yield* precondition(headers["if-match"])
        return view(yield* asProblems(params.id)(sessions.update(params.id, user, payload.changes, { ifMatch })))
      }))
      .handle("replace", Effect.fnUntraced(function*({ params, headers, payload }) {
        const user = yield* owner
        const ifMatch = yield* precondition(headers["if-match"])
        if (ifMatch === undefined) return yield* new SessionPreconditionRequired({ sessionId: params.id })
        return view(yield* asProblems(params.id)(sessions.replace(params.id, user, payload, ifMatch)))
      }))
      .handle("remove", Effect.fnUntraced(function*({ params, headers }) {
        const user = yield* owner
        const ifMatch = yield* precondition(headers["if-match"])
        yield* asProblems(params.id)(sessions.remove(params.id, user, { ifMatch }))
      }))
  })
)

/** Ready when a session object answers: a read of a session never written, which writes nothing. */
const HealthHandlers = HttpApiBuilder.group(
  SessionsApi,
  "health",
  Effect.fn(function*(handlers) {
    const sessions = yield* Sessions
    const probe = sessions.get("readiness", "readiness").pipe(Effect.catchTag("meshwork/StateCoordinator/StateNotFound", () => Effect.void))
    return handlers.handle("health", Health.ready("sessions", { durableObjects: probe }))
  })
)

export const SessionsRoutes = HttpApiBuilder.layer(SessionsApi).pipe(
  Layer.provide([SessionsHandlers, HealthHandlers]),
  Layer.provide([HttpApiMiddleware.layerProblemDetails({ includeDetails: true }), Identity.MeshIdentity.layer])
)
