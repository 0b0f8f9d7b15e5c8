/** The mesh's identity assertions on virtual time: lifetime, reuse and tampering. */
import { expect, it } from "@effect/vitest"
import { env } from "cloudflare:workers"
import { Effect, Layer } from "effect"
import { TestClock } from "effect/testing"
import * as Identity from "../../src/layers/security/Identity.ts"
import { envLayer } from "../../src/runtime/Worker.ts"

const KeyLive = Identity.IdentityKey.layer.pipe(Layer.provide(envLayer({ MESH_IDENTITY_SECRET: env.MESH_IDENTITY_SECRET })))
const alice: Identity.Identity = { kind: "user", sub: "alice", roles: ["user"] }

it.effect("an assertion verifies for one minute, then never again, even from the verifier's memory", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(1_800_000_000_000)
    const assertion = yield* Identity.sign(alice)
    expect(yield* Identity.verify(assertion)).toEqual(alice)
    yield* TestClock.adjust("59 seconds")
    expect(yield* Identity.verify(assertion)).toEqual(alice)
    yield* TestClock.adjust("2 seconds")
    expect((yield* Effect.flip(Identity.verify(assertion)))._tag).toBe("Unauthorized")
  }).pipe(Effect.provide(KeyLive)))

it.effect("a signer reuses an assertion for the same identity for 10 s, then signs anew", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(1_800_000_000_000)
    const first = yield* Identity.sign(alice)
    yield* TestClock.adjust("9 seconds")
    expect(yield* Identity.sign(alice)).toBe(first)
    expect(yield* Identity.sign({ kind: "service", sub: "products" })).not.toBe(first)
    yield* TestClock.adjust("2 seconds")
    const second = yield* Identity.sign(alice)
    expect(second).not.toBe(first)
    expect(yield* Identity.verify(second)).toEqual(alice)
  }).pipe(Effect.provide(KeyLive)))

it.effect("refuses an assertion whose payload was changed, or that arrives from the future", () =>
  Effect.gen(function*() {
    yield* TestClock.setTime(1_800_000_000_000)
    const assertion = yield* Identity.sign(alice)
    const [version, payload, signature] = assertion.split(".")
    const changed = JSON.parse(atob(payload!.replaceAll("-", "+").replaceAll("_", "/")))
    changed.identity.roles = ["admin"]
    const forged = `${version}.${btoa(JSON.stringify(changed)).replaceAll("=", "")}.${signature}`
    expect((yield* Effect.flip(Identity.verify(forged)))._tag).toBe("Unauthorized")

    yield* TestClock.setTime(1_800_000_000_000 - 10_000)
    expect((yield* Effect.flip(Identity.verify(assertion)))._tag).toBe("Unauthorized")
  }).pipe(Effect.provide(KeyLive)))
