/**
 * The API-key handlers (`/api/auth/keys`): who may issue, list, revoke and
 * verify keys. A key acts as its user, so issuing one is bounded twice: by
 * the user's roles (a key never carries more) and by the caller's (a caller
 * that is not an admin, a key among them, issues only for itself and only
 * roles it holds). Plans and quotas of its own are the admins' to give.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as HttpApiBuilder from "effect/http-api/HttpApiBuilder"
import { Identity, Pagination, Problem } from "meshwork"
import { UserNotFound } from "../users/api.ts"
import { Accounts } from "./Accounts.ts"
import { ApiKeyNotFound, AuthApi, InvalidApiKey } from "./api.ts"
import { ApiKeys } from "./ApiKeys.ts"

type Role = "admin" | "user"

/** The roles a user's keys may carry: an admin's any, a user's only `user`. */
const grantable = (role: string): ReadonlyArray<Role> => (role === "admin" ? ["admin", "user"] : ["user"])

const signedInUser = Identity.authorize((identity) => identity.kind === "user", "API keys belong to signed-in users")

const subOf = (identity: Identity.Identity): string => (identity.kind === "user" ? identity.sub : "")

export const KeyHandlers = HttpApiBuilder.group(
  AuthApi,
  "keys",
  Effect.fn(function*(handlers) {
    const accounts = yield* Accounts
    const keys = yield* ApiKeys

    return handlers
      .handle("create", Effect.fnUntraced(function*({ payload }) {
        const caller = yield* signedInUser
        const admin = Identity.hasRole(caller, "admin")
        const userId = payload.userId ?? subOf(caller)
        if (!admin && userId !== subOf(caller)) return yield* new Problem.Forbidden({ detail: "Only admins issue keys for another user" })
        if (!admin && (payload.plan !== undefined || payload.perMinute !== undefined || payload.perDay !== undefined)) {
          return yield* new Problem.Forbidden({ detail: "Only admins choose a key's plan or quotas" })
        }
        const owner = yield* accounts.byId(userId)
        if (Option.isNone(owner)) return yield* new UserNotFound({ userId })
        const roles = payload.roles ?? ["user"]
        const callerRoles = caller.kind === "user" ? caller.roles : []
        const allowed = grantable(owner.value.role).filter((role) => admin || callerRoles.includes(role))
        const excess = roles.filter((role) => !allowed.includes(role))
        if (excess.length > 0) {
          return yield* new Problem.Forbidden({ detail: `A key carries at most its user's roles, and the caller's: not ${excess.join(", ")}` })
        }
        let expiresAt: number | undefined
        if (payload.expiresAt !== undefined) {
          expiresAt = Date.parse(payload.expiresAt)
          if (Number.isNaN(expiresAt) || expiresAt <= (yield* Clock.currentTimeMillis)) {
            return yield* new Problem.BadRequest({
              detail: "expiresAt must be an ISO 8601 time in the future",
              errors: [{ path: ["payload", "expiresAt"], message: "An ISO 8601 time in the future, e.g. 2027-01-01T00:00:00Z" }]
            })
          }
        }
        return yield* keys.issue({
          name: payload.name,
          userId,
          roles: [...new Set(roles)],
          plan: payload.plan,
          perMinute: payload.perMinute,
          perDay: payload.perDay,
          expiresAt
        })
      }))
      .handle("list", Effect.fnUntraced(function*({ query }) {
        const caller = yield* signedInUser
        const admin = Identity.hasRole(caller, "admin")
        if (!admin && query.userId !== undefined && query.userId !== subOf(caller)) {
          return yield* new Problem.Forbidden({ detail: "Only admins list another user's keys" })
        }
        return yield* keys.list({
          userId: admin ? query.userId : subOf(caller),
          limit: query.limit ?? Pagination.defaultLimit,
          cursor: query.cursor
        })
      }))
      .handle("revoke", Effect.fnUntraced(function*({ params }) {
        const caller = yield* signedInUser
        const owner = yield* keys.ownerOf(params.id)
        // Someone else's key is not found, as if it did not exist.
        if (Option.isNone(owner) || !(Identity.hasRole(caller, "admin") || owner.value === subOf(caller))) {
          return yield* new ApiKeyNotFound({ keyId: params.id })
        }
        yield* keys.revoke(params.id)
      }))
      .handle("verify", Effect.fnUntraced(function*({ payload }) {
        yield* Identity.authorize(Identity.isService, "Only the mesh's Workers verify API keys")
        const key = yield* keys.verify(payload.key)
        const owner = yield* accounts.byId(key.userId)
        // A key of a user who is gone is as invalid as an unknown one.
        if (Option.isNone(owner)) return yield* new InvalidApiKey({ detail: "The API key is not valid" })
        if (!owner.value.active) return yield* new Problem.Forbidden({ detail: "The account is disabled" })
        // Roles the user has lost since are dropped; a key left with none is refused.
        const roles = key.roles.filter((role) => grantable(owner.value.role).includes(role))
        if (roles.length === 0) return yield* new Problem.Forbidden({ detail: "The key's roles are no longer its user's" })
        return { ...key, roles }
      }))
  })
)
