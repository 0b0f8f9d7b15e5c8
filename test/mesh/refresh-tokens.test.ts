/** The auth service's refresh-token store, on its real D1 database. */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect, Layer, Option } from "effect"
import * as D1 from "../../src/runtime/D1.ts"
import { envLayer } from "../../src/runtime/Worker.ts"
import { RefreshTokens } from "../../src/services/auth/Tokens.ts"

const StoreLive = RefreshTokens.layerNoDeps.pipe(Layer.provide(D1.layer("AUTH_DB")), Layer.provide(envLayer(env)))
const userId = () => `user-${crypto.randomUUID()}`

it.live("keeps a token usable when looking up its owner fails, so the client can retry", () =>
  Effect.gen(function*() {
    const store = yield* RefreshTokens
    const owner = userId()
    const token = yield* store.issue(owner)
    const failed = yield* Effect.flip(store.use(token, () => Effect.fail("users service unreachable" as const)))
    expect(failed).toBe("users service unreachable")
    const used = yield* store.use(token, (id) => Effect.succeed(Option.some(id)))
    expect(used.owner).toBe(owner)
  }).pipe(Effect.provide(StoreLive)))

it.live("revokes the family when the owner is no longer active", () =>
  Effect.gen(function*() {
    const store = yield* RefreshTokens
    const token = yield* store.issue(userId())
    const refused = yield* Effect.flip(store.use(token, () => Effect.succeed(Option.none())))
    expect(refused._tag).toBe("InvalidRefreshToken")
    expect((yield* Effect.flip(store.use(token, (id) => Effect.succeed(Option.some(id)))))._tag).toBe("InvalidRefreshToken")
  }).pipe(Effect.provide(StoreLive)))

it.live("issues nothing into a revoked family, even after the token that revoked it was claimed", () =>
  Effect.gen(function*() {
    const store = yield* RefreshTokens
    const owner = userId()
    const first = yield* store.issue(owner)
    const { familyId } = yield* store.use(first, (id) => Effect.succeed(Option.some(id)))
    // The replay of `first` lands before the winner issues its next token.
    expect((yield* Effect.flip(store.use(first, (id) => Effect.succeed(Option.some(id)))))._tag).toBe("InvalidRefreshToken")
    expect((yield* Effect.flip(store.issue(owner, familyId)))._tag).toBe("InvalidRefreshToken")
    // A new login is a new family, unaffected.
    const fresh = yield* store.issue(owner)
    expect((yield* store.use(fresh, (id) => Effect.succeed(Option.some(id)))).owner).toBe(owner)
  }).pipe(Effect.provide(StoreLive)))

it.live("revokes every family of a user at once", () =>
  Effect.gen(function*() {
    const store = yield* RefreshTokens
    const owner = userId()
    const tokens = yield* Effect.all([store.issue(owner), store.issue(owner)])
    const other = yield* store.issue(userId())
    yield* store.revokeUser(owner)
    for (const token of tokens) {
      expect((yield* Effect.flip(store.use(token, (id) => Effect.succeed(Option.some(id)))))._tag).toBe("InvalidRefreshToken")
    }
    expect(Option.isSome(Option.some((yield* store.use(other, (id) => Effect.succeed(Option.some(id)))).owner))).toBe(true)
  }).pipe(Effect.provide(StoreLive)))
