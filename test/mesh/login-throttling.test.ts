/**
 * Password guessing, black-box through the gateway: per account and per
 * account and client (IPv6 by /64), with progressive backoff that an attacker
 * rotating addresses cannot turn into a lasting lockout of the real user.
 * The auth service runs with the test settings of vitest.config.ts: 3 free
 * failures per account and client, 10 per account, blocks capped at 2 s.
 */
import { describe, expect, it } from "vitest"
import { expectProblem, gateway, seedUser, type SeededUser, send, signedIn, unique } from "../helpers.ts"

const maxBlockSeconds = 2

const loginFrom = (address: string, credentials: { readonly email: string; readonly password: string }) =>
  gateway("/api/auth/login", {
    method: "POST",
    headers: { "content-type": "application/json", "cf-connecting-ip": address },
    body: JSON.stringify({ email: credentials.email, password: credentials.password })
  })

const wrong = (user: Pick<SeededUser, "email">) => ({ email: user.email, password: `wrong-${unique()}-password` })

const sleep = (millis: number) => new Promise((resolve) => setTimeout(resolve, millis))

/** A 429 as the throttle answers it: problem+json, with the wait in the body and in Retry-After. */
const expectThrottled = async (response: Response) => {
  const problem = await expectProblem(response, 429)
  expect(problem).toMatchObject({ type: "urn:meshwork:problem:too-many-attempts", title: "Too many attempts" })
  const retryAfter = Number(response.headers.get("retry-after"))
  expect(retryAfter).toBeGreaterThanOrEqual(1)
  expect(retryAfter).toBeLessThanOrEqual(maxBlockSeconds)
  expect(problem["retryAfterSeconds"]).toBe(retryAfter)
  return problem
}

/** Signs in from `address`, waiting out any block it is told of, for at most `seconds`. */
const loginAfterWaiting = async (address: string, user: SeededUser, seconds: number) => {
  const deadline = Date.now() + seconds * 1000
  for (;;) {
    const response = await loginFrom(address, user)
    if (response.status !== 429 || Date.now() > deadline) return response
    await sleep(Number(response.headers.get("retry-after")) * 1000)
  }
}

/** 60 wrong passwords for `email`, each from a new address: the statuses, and the 429 bodies. */
const guessFromEverywhere = async (email: string, prefix: string, during?: (index: number, status: number) => Promise<void>) => {
  const statuses: Array<number> = []
  const throttled: Array<Record<string, unknown>> = []
  for (let index = 0; index < 60; index++) {
    const response = await loginFrom(`${prefix}.${index}`, wrong({ email }))
    statuses.push(response.status)
    if (response.status === 429) throttled.push(await expectThrottled(response))
    else await expectProblem(response, 401)
    await during?.(index, response.status)
  }
  return { statuses, throttled }
}

describe("login throttling per account", () => {
  it("answers 60 wrong passwords from rotating addresses with 429s, yet lets the real user in from home", async () => {
    const victim = await seedUser()
    const home = "198.51.100.20"
    // The user has signed in from home before: home is a known client of the account.
    expect((await loginFrom(home, victim)).status).toBe(200)

    const { statuses } = await guessFromEverywhere(victim.email, "203.0.113", async (index, status) => {
      if (index !== 9) return
      // The 10th failure blocks the account for 1 s: a right password from
      // elsewhere is refused unchecked, from home it is let in.
      expect(status).toBe(401)
      await expectThrottled(await loginFrom("192.0.2.200", victim))
      expect((await loginFrom(home, victim)).status).toBe(200)
    })
    expect(statuses.slice(0, 10)).toEqual(new Array(10).fill(401))
    expect(statuses.filter((status) => status === 429).length).toBeGreaterThanOrEqual(30)

    // From a new address, after a wait bounded by the account's cap.
    const started = Date.now()
    const late = await loginAfterWaiting("192.0.2.201", victim, 3 * maxBlockSeconds)
    expect(late.status).toBe(200)
    expect(Date.now() - started).toBeLessThan((maxBlockSeconds + 1) * 1000)
  })

  it("throttles an email nobody has exactly like one that exists", async () => {
    const known = await seedUser()
    const [forKnown, forUnknown] = await Promise.all([
      guessFromEverywhere(known.email, "203.0.114"),
      guessFromEverywhere(`${unique()}@example.com`, "203.0.115")
    ])
    expect(forUnknown.statuses.slice(0, 10)).toEqual(forKnown.statuses.slice(0, 10))
    expect(forUnknown.throttled.length).toBeGreaterThanOrEqual(30)
    const withoutWait = ({ retryAfterSeconds: _, ...rest }: Record<string, unknown>) => rest
    expect(withoutWait(forUnknown.throttled[0]!)).toEqual(withoutWait(forKnown.throttled[0]!))
  })
})

describe("login throttling per account and client", () => {
  it("blocks one address after 3 failures, not the others, and a success clears it", async () => {
    const user = await seedUser()
    const address = "192.0.2.55"
    for (let attempt = 0; attempt < 3; attempt++) await expectProblem(await loginFrom(address, wrong(user)), 401)
    // A right password while blocked is refused, unchecked.
    await expectThrottled(await loginFrom(address, user))
    // Another address is not blocked (the account has 3 of its 10).
    await expectProblem(await loginFrom("192.0.2.56", wrong(user)), 401)
    // After the wait, the right password works, and the counter starts over.
    expect((await loginAfterWaiting(address, user, 3 * maxBlockSeconds)).status).toBe(200)
    await expectProblem(await loginFrom(address, wrong(user)), 401)
    await expectProblem(await loginFrom(address, wrong(user)), 401)
  })

  it("counts IPv6 clients by /64: addresses of one /64 share a bucket", async () => {
    const user = await seedUser()
    for (const address of ["2001:db8:7:1::1", "2001:db8:7:1::2", "2001:db8:7:1:abcd::3"]) {
      await expectProblem(await loginFrom(address, wrong(user)), 401)
    }
    await expectThrottled(await loginFrom("2001:db8:7:1:ffff:ffff:ffff:ffff", user))
    // The next /64 is another client.
    expect((await loginFrom("2001:db8:7:2::1", user)).status).toBe(200)
  })

  it("throttles re-entering one's password (to set a password) the same way", async () => {
    const self = await signedIn()
    const path = `/api/auth/users/${self.id}/password`
    const body = (current: string) => ({ password: `new-${unique()}-password`, current_password: current })
    for (let attempt = 0; attempt < 3; attempt++) await expectProblem(await send("PUT", path, body("not-the-password"), self.token), 401)
    await expectThrottled(await send("PUT", path, body(self.password), self.token))
  })
})
