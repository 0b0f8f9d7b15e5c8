/**
 * The per-Worker runtime: turns a Layer and Effect handlers into the
 * `{ fetch, queue, scheduled }` object a Worker module exports.
 *
 * ```ts
 * export default Worker.make({
 *   name: "hello",
 *   layer: Greeter.layer,
 *   fetch: (request) => Greeter.useSync((greeter) => Response.json(greeter.greet()))
 * })
 * ```
 *
 * The layer is built once per isolate, on the first invocation (Workers forbid
 * I/O at module scope, and `env` arrives with the first call), and its
 * services are shared by every later invocation. Nothing request-scoped lives
 * in it: the request is an argument, `ctx.waitUntil` is the `Invocation`
 * service of each call. A typed failure becomes its RFC 9457 problem response;
 * a defect becomes a bare 500 and is logged.
 *
 * Every Worker gets the telemetry layer (src/runtime/Telemetry.ts) with its
 * name as `service.name`: each request runs in a server span (continuing the
 * caller's trace), and its spans are exported under `ctx.waitUntil` once the
 * request and its `waitUntil` work are done.
 */
import type { Tracer } from "effect"
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Telemetry from "./Telemetry.ts"
import * as ServerSpans from "./telemetry/ServerSpans.ts"
import { withoutTraceContext } from "./telemetry/TraceContext.ts"
import { Invocation, WorkerEnv } from "./Bindings.ts"
import * as Problem from "./Problem.ts"

/** A fetch handler: the request in, a Response out, typed errors rendered as problems. */
export type Handler<E, R> = (request: Request) => Effect.Effect<Response, E, R>

/** What every handler can use besides the Worker's own services. */
export type Ambient = WorkerEnv | Invocation | Telemetry.Telemetry

export interface Options<Provided, LE, FE, QE, SE, Body> {
  /** The Worker's name: log annotations and the tracing `service.name`. */
  readonly name: string
  /**
   * A public Worker (the gateway): a client's `traceparent` is continued only
   * when `TRUST_CLIENT_TRACEPARENT` is true; otherwise its request starts a
   * new trace linked to the client's. Internal Workers continue their caller's.
   */
  readonly edge?: boolean | undefined
  /** Built once per isolate; it may read `WorkerEnv` and `Config` (wrangler vars and secrets). */
  readonly layer: Layer.Layer<Provided, LE, WorkerEnv | Telemetry.Telemetry>
  readonly fetch?: Handler<FE, Provided | Ambient> | undefined
  /** A failure retries the whole batch; ack or retry single messages inside for finer control. */
  readonly queue?: ((batch: MessageBatch<Body>) => Effect.Effect<void, QE, Provided | Ambient>) | undefined
  readonly scheduled?: ((controller: ScheduledController) => Effect.Effect<void, SE, Provided | Ambient>) | undefined
}

/** The layer every Worker gets: its env, and Config read from it. */
export const envLayer = (env: object): Layer.Layer<WorkerEnv> =>
  Layer.merge(WorkerEnv.layer(env), ConfigProvider.layer(ConfigProvider.fromUnknown(env)))

/**
 * The services of one isolate (a Worker isolate, or one Durable Object
 * instance), built once from `layer` and never torn down: the isolate's end
 * is its end.
 */
export class IsolateServices<Provided, LE> {
  #services: Context.Context<Provided | WorkerEnv> | undefined
  #building: Promise<Context.Context<Provided | WorkerEnv>> | undefined
  readonly #layer: Layer.Layer<Provided, LE, WorkerEnv>
  readonly #annotations: Record<string, string>

  constructor(layer: Layer.Layer<Provided, LE, WorkerEnv>, annotations: Record<string, string>) {
    this.#layer = layer
    this.#annotations = annotations
  }

  /** The services, or a promise of them while the first build runs. */
  get(env: object): Context.Context<Provided | WorkerEnv> | Promise<Context.Context<Provided | WorkerEnv>> {
    if (this.#services !== undefined) return this.#services
    if (this.#building !== undefined) return this.#building
    const build = Effect.flatMap(Scope.make(), (scope) =>
      Layer.buildWithScope(Layer.provideMerge(this.#layer, envLayer(env)), scope)).pipe(
        Effect.annotateLogs(this.#annotations),
        Effect.tapCause((cause) => Effect.logError("Worker layer failed to build", cause))
      )
    const fiber = Effect.runFork(build)
    const exit = fiber.pollUnsafe()
    if (exit !== undefined) return this.#settle(exit)
    return this.#building = new Promise((resolve, reject) =>
      fiber.addObserver((exit) => {
        try {
          resolve(this.#settle(exit))
        } catch (error) {
          reject(error)
        }
      })
    )
  }

  #settle(exit: Exit.Exit<Context.Context<Provided | WorkerEnv>, LE>): Context.Context<Provided | WorkerEnv> {
    this.#building = undefined
    if (Exit.isSuccess(exit)) return this.#services = exit.value
    // A failed build is retried by the next invocation rather than cached:
    // the layer does no I/O, so only a fixed config can change the outcome.
    throw new Error(`Worker layer failed to build: ${Cause.pretty(exit.cause)}`)
  }
}

/**
 * Runs one invocation's effect on the isolate's services.
 *
 * Two fast paths, found by profiling one-hop requests in workerd, where the
 * fiber and its run loop were the adapter's whole cost: an effect that is
 * already an Exit (`Effect.succeed(response)`, `Effect.fail(problem)`) needs
 * no fiber at all, and a fiber that completes synchronously returns its value
 * without allocating a promise.
 */
export const runWith = <A, E, R>(
  services: Context.Context<R>,
  evaluate: () => Effect.Effect<A, E, R>,
  onExit: (exit: Exit.Exit<A, E>) => A
): A | Promise<A> => {
  let effect: Effect.Effect<A, E, R>
  try {
    effect = evaluate()
  } catch (defect) {
    return onExit(Exit.die(defect))
  }
  if (Exit.isExit(effect)) return onExit(effect as Exit.Exit<A, E>)
  const fiber = Effect.runForkWith(services)(effect)
  const exit = fiber.pollUnsafe()
  if (exit !== undefined) return onExit(exit)
  return new Promise<A>((resolve) => fiber.addObserver((exit) => resolve(onExit(exit))))
}

/** Turns the Exit of a fetch handler into the Response to send, logging what the caller must not see. */
export const respond = (services: Context.Context<never>, annotations: Record<string, string>, span?: Tracer.Span) =>
(exit: Exit.Exit<Response, unknown>): Response => {
  if (Exit.isSuccess(exit)) return exit.value
  if (Problem.isUnexpected(exit.cause)) {
    const log = Effect.logError("Request failed", exit.cause).pipe(Effect.annotateLogs(annotations))
    // Logged in the request's span, so the line carries its trace id.
    Effect.runForkWith(services)(span === undefined ? log : Effect.withParentSpan(log, span, { captureStackTrace: false }))
  }
  return Problem.fromCause(exit.cause)
}

/** Logs a failed invocation and throws, so the platform retries (queues) or reports (cron) it. */
const rethrow = (services: Context.Context<never>, annotations: Record<string, string>) =>
(exit: Exit.Exit<void, unknown>): void => {
  if (Exit.isSuccess(exit)) return
  Effect.runForkWith(services)(Effect.logError("Invocation failed", exit.cause).pipe(Effect.annotateLogs(annotations)))
  throw new Error(Cause.pretty(exit.cause))
}

/** A Worker whose layer does not build answers 500 (the build failure is logged where it happens). */
const unavailable = (): Response => Problem.fromError(new Problem.InternalError({ detail: "The service is misconfigured" }))

/** `isolate.get(env)`, with a failed build turned into `onFailure()`. */
const withServices = <S, B>(get: () => S | Promise<S>, f: (services: S) => B | Promise<B>, onFailure: () => B) => {
  let services: S | Promise<S>
  try {
    services = get()
  } catch {
    return onFailure()
  }
  return services instanceof Promise ? services.then(f, onFailure) : f(services)
}

/**
 * Serves one fetch event: in a server span when telemetry is on, exporting
 * the request's spans after it (and its `waitUntil` work) is done.
 */
export const serveFetch = <R>(
  services: Context.Context<R | Telemetry.Telemetry>,
  request: Request,
  ctx: { waitUntil(promise: Promise<unknown>): void },
  handler: (request: Request) => Effect.Effect<Response, unknown, R | Telemetry.Telemetry | Invocation>,
  options: { readonly annotations: Record<string, string>; readonly edge: boolean }
): Response | Promise<Response> => {
  const telemetry = Context.get(services, Telemetry.Telemetry)
  const trust = !options.edge || telemetry.settings.trustClientTraceparent
  // An untrusted client's trace context goes no further (the span only links to it).
  const forwarded = trust ? request : withoutTraceContext(request)
  if (!telemetry.enabled) {
    const context = Context.add(services, Invocation, ctx)
    return runWith(context, () => handler(forwarded), respond(context, options.annotations))
  }
  const clock = Context.get(services, Clock.Clock)
  const { span, tracestate } = ServerSpans.startServerSpan(telemetry, request, trust, clock)
  const invocation = ServerSpans.invocation(telemetry, ctx)
  const context = Context.add(services, Invocation, invocation)
  const render = respond(context, options.annotations, span)
  // A handler that answered at once (an Exit) made no span or log to parent: no fiber for it.
  const evaluate = (): ReturnType<typeof handler> => {
    const effect = handler(forwarded)
    return Exit.isExit(effect) ? effect : ServerSpans.within(effect, span, tracestate)
  }
  return runWith(context, evaluate, (exit) => {
    const response = render(exit)
    ServerSpans.endServerSpan(span, exit, response, clock)
    invocation.done()
    return response
  })
}

/**
 * Runs a queue or cron invocation, then exports its spans (their traces are
 * the messages' own, or one new trace per cron run).
 */
const runInvocation = async <R>(
  services: Context.Context<R | Telemetry.Telemetry>,
  ctx: ExecutionContext,
  spanName: string | undefined,
  effect: () => Effect.Effect<void, unknown, R | Telemetry.Telemetry | Invocation>,
  onExit: (exit: Exit.Exit<void, unknown>) => void
): Promise<void> => {
  const telemetry = Context.get(services, Telemetry.Telemetry)
  if (!telemetry.enabled) {
    const context = Context.add(services, Invocation, ctx)
    return runWith(context, effect, onExit)
  }
  const clock = Context.get(services, Clock.Clock)
  const span = spanName === undefined ? undefined : ServerSpans.startSpan(telemetry, spanName, "internal", undefined, clock)
  const invocation = ServerSpans.invocation(telemetry, ctx)
  const context = Context.add(services, Invocation, invocation)
  try {
    return await runWith(
      context,
      () => span === undefined ? effect() : ServerSpans.within(effect(), span, undefined),
      (exit) => {
        if (span !== undefined) ServerSpans.endSpan(span, exit, clock)
        onExit(exit)
      }
    )
  } finally {
    invocation.done()
  }
}

/**
 * Declares a Worker. The returned object is the module's default export.
 */
export const make = <Provided, LE = never, FE = never, QE = never, SE = never, Body = unknown>(
  options: Options<Provided, LE, FE, QE, SE, Body>
): ExportedHandler<object, Body> => {
  const annotations = { worker: options.name }
  const isolate = new IsolateServices(
    Layer.provideMerge(options.layer, Telemetry.layer(options.name)),
    annotations
  )
  const handler: ExportedHandler<object, Body> = {}
  const { fetch, queue, scheduled } = options
  const serveOptions = { annotations, edge: options.edge === true }

  if (fetch !== undefined) {
    handler.fetch = (request, env, ctx) =>
      withServices(() => isolate.get(env), (services) => serveFetch(services, request, ctx, fetch, serveOptions), unavailable)
  }
  if (queue !== undefined) {
    handler.queue = async (batch, env, ctx) => {
      const services = await isolate.get(env)
      // Awaited, not returned: an event handler's value is ignored, and workerd warns about one.
      await runInvocation(services, ctx, undefined, () => queue(batch), rethrow(services, annotations))
    }
  }
  if (scheduled !== undefined) {
    handler.scheduled = async (controller, env, ctx) => {
      const services = await isolate.get(env)
      await runInvocation(services, ctx, `cron ${controller.cron}`, () => scheduled(controller), rethrow(services, annotations))
    }
  }
  return handler
}
