/**
 * Durable Object classes from a Layer.
 *
 * ```ts
 * export const Counter = DurableObjects.make({
 *   name: "Counter",
 *   layer: CounterStore.layer,          // may use DurableObjectState
 *   fetch: (request) => ...,
 *   alarm: () => ...
 * })
 * ```
 *
 * Each object instance builds the layer once, inside
 * `blockConcurrencyWhile` in its constructor, so no request sees a half-built
 * object (schema migrations on `ctx.storage.sql` belong in that layer). The
 * object's `DurableObjectState` is a service; its `waitUntil` is the
 * `Invocation`. Subclasses add RPC methods with `this.run(effect)`.
 */
import { DurableObject } from "cloudflare:workers"
import { Cause, Context, Effect, Exit, Layer } from "effect"
import { Invocation, type WorkerEnv } from "./Bindings.ts"
import * as Problem from "./Problem.ts"
import { type Ambient, type Handler, IsolateServices, respond, runWith } from "./Worker.ts"

/** The running object's state: storage, id, alarms, `blockConcurrencyWhile`. */
export class State extends Context.Service<State, DurableObjectState>()("meshwork/runtime/DurableObjects/State") {}

export interface Options<Provided, LE, FE, AE> {
  readonly name: string
  readonly layer: Layer.Layer<Provided, LE, WorkerEnv | State>
  readonly fetch?: Handler<FE, Provided | Ambient | State> | undefined
  readonly alarm?: ((info: AlarmInvocationInfo | undefined) => Effect.Effect<void, AE, Provided | Ambient | State>) | undefined
}

export const make = <Provided, LE = never, FE = never, AE = never>(options: Options<Provided, LE, FE, AE>) => {
  const annotations = { durableObject: options.name }
  return class MeshworkDurableObject extends DurableObject<object> {
    readonly #isolate: IsolateServices<Provided | State, LE>
    #services: Context.Context<Provided | State | WorkerEnv | Invocation> | undefined

    constructor(ctx: DurableObjectState, env: object) {
      super(ctx, env)
      const layer = Layer.provideMerge(options.layer, Layer.succeed(State, ctx))
      this.#isolate = new IsolateServices(layer, annotations)
      void ctx.blockConcurrencyWhile(async () => {
        this.#services = Context.add(await this.#isolate.get(env), Invocation, ctx)
      })
    }

    /** The built services; the constructor's `blockConcurrencyWhile` guarantees them before any event. */
    protected get services(): Context.Context<Provided | State | WorkerEnv | Invocation> {
      if (this.#services === undefined) throw new Error(`${options.name}: layer used before it was built`)
      return this.#services
    }

    /** Runs an effect on this object's services, for RPC methods. Rejects with the rendered cause. */
    run<A, E>(effect: Effect.Effect<A, E, Provided | Ambient | State>): Promise<A> {
      return Effect.runPromiseExitWith(this.services)(effect).then((exit) => {
        if (Exit.isSuccess(exit)) return exit.value
        throw new Error(Cause.pretty(exit.cause))
      })
    }

    override fetch(request: Request): Response | Promise<Response> {
      const handler = options.fetch
      if (handler === undefined) return Problem.fromError(new Problem.MethodNotAllowed({ detail: `${options.name} has no fetch handler` }))
      const services = this.services
      return runWith(services, () => handler(request), respond(services, annotations))
    }

    override alarm(info?: AlarmInvocationInfo): Promise<void> {
      const handler = options.alarm
      if (handler === undefined) return Promise.resolve()
      return this.run(Effect.suspend(() => handler(info)))
    }
  }
}
