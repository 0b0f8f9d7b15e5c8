/** One hop on Hono, the same route and body. */
import { Hono } from "hono"

const app = new Hono()
app.get("/hello", (c) => c.json({ message: "hello", id: "42" }))

export default app
