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
 * `Invocation`. Subclasses add RPC methods with `this.run(effect)`; a method
 * that takes the caller's trace context (`Telemetry.activeCarrier`) and passes it
 * as `this.run(effect, { method, trace })` joins the caller's trace, with a
 * span `<Object>.<method>` exported under the object's name as `service.name`.
 * `fetch` continues the trace of the request's `traceparent`.
 */
import { DurableObject } from "cloudflare:workers"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Telemetry from "./Telemetry.ts"
import * as ServerSpans from "./telemetry/ServerSpans.ts"
import { Invocation, type WorkerEnv } from "./Bindings.ts"
import * as Problem from "./Problem.ts"
import { type Ambient, type Handler, IsolateServices, serveFetch } from "./Worker.ts"

/** The running object's state: storage, id, alarms, `blockConcurrencyWhile`. */
export class State extends Context.Service<State, DurableObjectState>()("meshwork/runtime/DurableObjects/State") {}

export interface Options<Provided, LE, FE, AE> {
  readonly name: string
  readonly layer: Layer.Layer<Provided, LE, WorkerEnv | State | Telemetry.Telemetry>
  readonly fetch?: Handler<FE, Provided | Ambient | State> | undefined
  readonly alarm?: ((info: AlarmInvocationInfo | undefined) => Effect.Effect<void, AE, Provided | Ambient | State>) | undefined
}

export const make = <Provided, LE = never, FE = never, AE = never>(options: Options<Provided, LE, FE, AE>) => {
  const annotations = { durableObject: options.name }
  return class MeshworkDurableObject extends DurableObject<object> {
    readonly #isolate: IsolateServices<Provided | State | Telemetry.Telemetry, LE>
    #services: Context.Context<Provided | State | Telemetry.Telemetry | WorkerEnv | Invocation> | undefined

    constructor(ctx: DurableObjectState, env: object) {
      super(ctx, env)
      // Objects export traces only: their Worker's isolate exports the metrics.
      const layer = Layer.provideMerge(
        options.layer,
        Layer.merge(Layer.succeed(State, ctx), Telemetry.layer(options.name, { metrics: false }))
      )
      this.#isolate = new IsolateServices(layer, annotations)
      void ctx.blockConcurrencyWhile(async () => {
        this.#services = Context.add(await this.#isolate.get(env), Invocation, ctx)
      })
    }

    /** The built services; the constructor's `blockConcurrencyWhile` guarantees them before any event. */
    protected get services(): Context.Context<Provided | State | Telemetry.Telemetry | WorkerEnv | Invocation> {
      if (this.#services === undefined) throw new Error(`${options.name}: layer used before it was built`)
      return this.#services
    }

    /**
     * Runs an effect on this object's services, for RPC methods. Rejects with
     * the rendered cause. With `call`, the effect runs in a span of the
     * caller's trace, exported once the call (and its `waitUntil` work) is done.
     */
    run<A, E>(
      effect: Effect.Effect<A, E, Provided | Ambient | State>,
      call?: { readonly method: string; readonly trace?: Telemetry.Carrier | undefined }
    ): Promise<A> {
      const services = this.services
      const telemetry = Context.get(services, Telemetry.Telemetry)
      const settle = (exit: Exit.Exit<A, E>): A => {
        if (Exit.isSuccess(exit)) return exit.value
        throw new Error(Cause.pretty(exit.cause))
      }
      if (!telemetry.enabled) return Effect.runPromiseExitWith(services)(effect).then(settle)
      // A call that is not traced makes no spans: they would be roots of no one's trace.
      if (call === undefined) return Effect.runPromiseExitWith(services)(Effect.withTracerEnabled(effect, false)).then(settle)
      const clock = Context.get(services, Clock.Clock)
      const span = ServerSpans.startSpan(telemetry, `${options.name}.${call.method}`, "server", call.trace, clock)
      const invocation = ServerSpans.invocation(telemetry, this.ctx)
      const traced = ServerSpans.within(effect, span, call.trace?.tracestate)
      return Effect.runPromiseExitWith(Context.add(services, Invocation, invocation))(traced).then((exit) => {
        ServerSpans.endSpan(span, exit, clock)
        invocation.done()
        return settle(exit)
      })
    }

    override fetch(request: Request): Response | Promise<Response> {
      const handler = options.fetch
      if (handler === undefined) return Problem.fromError(new Problem.MethodNotAllowed({ allow: [], detail: `${options.name} has no fetch handler` }))
      return serveFetch(this.services, request, this.ctx, handler, { annotations, edge: false })
    }

    override alarm(info?: AlarmInvocationInfo): Promise<void> {
      const handler = options.alarm
      if (handler === undefined) return Promise.resolve()
      return this.run(Effect.suspend(() => handler(info)), { method: "alarm" })
    }
  }
}
