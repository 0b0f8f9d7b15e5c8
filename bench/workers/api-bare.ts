/**
 * The `api` group hand-written: the same routes, rules and answers as
 * api-meshwork.ts (400 for invalid input, 415 for a body that is not JSON,
 * 413 past 64 KiB), validation by hand.
 */
const maxBodyBytes = 64 * 1024
const idPattern = /^[A-Za-z0-9_-]+$/
const emailPattern = /^[^\s@]+@[^\s@]+\.[^\s@]+$/

const problem = (status: number, title: string, extra: Record<string, unknown> = {}) =>
  Response.json({ type: "about:blank", title, status, ...extra }, { status, headers: { "content-type": "application/problem+json" } })

const invalid = (errors: ReadonlyArray<{ path: ReadonlyArray<string | number>; message: string }>) =>
  problem(400, "Bad Request", { detail: "Request validation failed", errors })

const isId = (value: unknown): value is string =>
  typeof value === "string" && value.length >= 1 && value.length <= 64 && idPattern.test(value)

interface NewUser {
  readonly email: string
  readonly name: string
  readonly tags: ReadonlyArray<string>
}

const validateNewUser = (body: unknown): NewUser | Array<{ path: Array<string | number>; message: string }> => {
  if (typeof body !== "object" || body === null || Array.isArray(body)) return [{ path: ["payload"], message: "Expected an object" }]
  const { email, name, tags } = body as Record<string, unknown>
  const errors: Array<{ path: Array<string | number>; message: string }> = []
  if (typeof email !== "string" || email.length > 254 || !emailPattern.test(email)) {
    errors.push({ path: ["payload", "email"], message: "Expected an email" })
  }
  if (typeof name !== "string" || name.trim() !== name || name.length < 1 || name.length > 100) {
    errors.push({ path: ["payload", "name"], message: "Expected a trimmed name of 1 to 100 characters" })
  }
  if (!Array.isArray(tags) || tags.length > 10) errors.push({ path: ["payload", "tags"], message: "Expected at most 10 tags" })
  else {
    tags.forEach((tag: unknown, i) => {
      if (typeof tag !== "string" || tag.length < 1 || tag.length > 32) {
        errors.push({ path: ["payload", "tags", i], message: "Expected a tag of 1 to 32 characters" })
      }
    })
  }
  return errors.length > 0 ? errors : { email: email as string, name: name as string, tags: tags as Array<string> }
}

/** The body as text, at most `maxBodyBytes`; undefined past it. A declared length is trusted, as workerd enforces it. */
const readBody = async (request: Request): Promise<string | undefined> => {
  const declared = request.headers.get("content-length")
  if (declared !== null) return Number(declared) > maxBodyBytes ? undefined : request.text()
  const reader = request.body!.getReader()
  const chunks: Array<Uint8Array> = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > maxBodyBytes) {
      await reader.cancel()
      return undefined
    }
    chunks.push(value)
  }
  return new TextDecoder().decode(await new Blob(chunks).arrayBuffer())
}

const createUser = async (request: Request): Promise<Response> => {
  const contentType = request.headers.get("content-type")
  if (contentType === null || contentType.split(";", 1)[0]!.trim().toLowerCase() !== "application/json") {
    return problem(415, "Unsupported Media Type")
  }
  const text = await readBody(request)
  if (text === undefined) return problem(413, "Payload Too Large")
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch {
    return invalid([{ path: ["payload"], message: "Expected a valid JSON body" }])
  }
  const user = validateNewUser(body)
  if (Array.isArray(user)) return invalid(user)
  return Response.json({ id: crypto.randomUUID(), ...user }, { status: 201 })
}

export default {
  fetch(request: Request): Response | Promise<Response> {
    const path = new URL(request.url).pathname
    if (path === "/users") {
      if (request.method === "POST") return createUser(request)
      return problem(405, "Method Not Allowed")
    }
    if (path.startsWith("/users/") && request.method === "GET") {
      const id = decodeURIComponent(path.slice("/users/".length))
      if (!isId(id)) return invalid([{ path: ["params", "id"], message: "Expected an id" }])
      return Response.json({ id, email: "bench@example.com", name: "Bench User", tags: ["bench"] })
    }
    return problem(404, "Not Found")
  }
}
