/**
 * A user's session: attributes, a cart and counters, kept by the state
 * coordinator (src/layers/state/StateCoordinator.ts), one Durable Object per
 * session. Changes are applied atomically, in order, inside the object.
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import { Bindings, StateCoordinator } from "meshwork"

// The session's schemas are the API's (api.ts), so that the gateway's API description reads
// them without bundling this module's Durable Object.
import { maxEntries, Session, SessionChange } from "./api.ts"

const without = <V>(record: Readonly<Record<string, V>>, key: string): Record<string, V> => {
  const { [key]: _, ...rest } = record
  return rest
}
const within = (record: Readonly<Record<string, unknown>>, what: string) =>
  Object.keys(record).length <= maxEntries
    ? Result.succeed(undefined)
    : Result.fail(`A session holds at most ${maxEntries} ${what}`)

export const apply = (session: Session, change: SessionChange): Result.Result<Session, string> => {
  switch (change._tag) {
    case "Increment": {
      const value = (session.counters[change.counter] ?? 0) + (change.by ?? 1)
      if (!Number.isSafeInteger(value)) return Result.fail(`Counter ${change.counter} would overflow`)
      const counters = { ...session.counters, [change.counter]: value }
      return Result.map(within(counters, "counters"), () => ({ ...session, counters }))
    }
    case "SetCartItem": {
      const cart = change.quantity === 0
        ? without(session.cart, change.productId)
        : { ...session.cart, [change.productId]: change.quantity }
      return Result.map(within(cart, "cart lines"), () => ({ ...session, cart }))
    }
    case "SetAttribute": {
      const attributes = change.value === null
        ? without(session.attributes, change.name)
        : { ...session.attributes, [change.name]: change.value }
      return Result.map(within(attributes, "attributes"), () => ({ ...session, attributes }))
    }
  }
}

export const emptySession: Session = { attributes: {}, cart: {}, counters: {} }

export const SessionState = StateCoordinator.define({
  name: "session",
  state: Session,
  change: SessionChange,
  initial: emptySession,
  apply,
  maxBytes: 64 * 1024,
  idleTtl: "30 days"
})

/** Sessions kept by the `SessionObject` namespace bound as SESSIONS. */
export class Sessions extends Context.Service<Sessions, StateCoordinator.Client<Session, SessionChange>>()(
  "meshwork/services/sessions/Sessions"
) {
  static readonly layer = Layer.effect(Sessions, Effect.map(Bindings.durableObject("SESSIONS"), SessionState.client))
}
