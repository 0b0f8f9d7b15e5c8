/**
 * The `api` group on Hono with @hono/zod-openapi: the same routes, rules and
 * answers as api-meshwork.ts (400 for invalid input, 415 for a body that is
 * not JSON, 413 past 64 KiB).
 */
import { createRoute, OpenAPIHono, z } from "@hono/zod-openapi"
import { bodyLimit } from "hono/body-limit"

const Id = z.string().min(1).max(64).regex(/^[A-Za-z0-9_-]+$/)
const Email = z.string().max(254).regex(/^[^\s@]+@[^\s@]+\.[^\s@]+$/)
const Name = z.string().refine((s) => s.trim() === s, "must be trimmed").pipe(z.string().min(1).max(100))
const Tags = z.array(z.string().min(1).max(32)).max(10)

const NewUser = z.object({ email: Email, name: Name, tags: Tags })
const User = z.object({ id: Id, email: Email, name: Name, tags: Tags })

const getUser = createRoute({
  method: "get",
  path: "/users/{id}",
  request: { params: z.object({ id: Id }) },
  responses: { 200: { content: { "application/json": { schema: User } }, description: "The user" } }
})

const createUser = createRoute({
  method: "post",
  path: "/users",
  request: { body: { content: { "application/json": { schema: NewUser } }, required: true } },
  responses: { 201: { content: { "application/json": { schema: User } }, description: "The new user" } }
})

const app = new OpenAPIHono({
  defaultHook: (result, c) => {
    if (!result.success) {
      return c.json({
        type: "about:blank",
        title: "Bad Request",
        status: 400,
        detail: "Request validation failed",
        errors: result.error.issues.map((issue) => ({ path: [result.target, ...issue.path.map(String)], message: issue.message }))
      }, 400)
    }
  }
})

app.use("/users", bodyLimit({ maxSize: 64 * 1024, onError: (c) => c.json({ title: "Payload Too Large", status: 413 }, 413) }))
app.openapi(getUser, (c) => c.json({ id: c.req.valid("param").id, email: "bench@example.com", name: "Bench User", tags: ["bench"] }, 200))
app.openapi(createUser, (c) => c.json({ id: crypto.randomUUID(), ...c.req.valid("json") }, 201))

export default app
