/**
 * Requests and responses whose headers this isolate may still set. A
 * response from `fetch`, a service binding or the cache has immutable
 * headers (so has an incoming request), so adding one means copying it; the
 * steps around a proxied request each add some (the caller's identity and
 * this Worker's, the rate limit's headers, CORS, the version that served
 * it), and each copy cost a measurable share of a hop. A copy made here is
 * remembered, so a later step sets its headers on it in place.
 */
const responses = new WeakSet<Response>()
const requests = new WeakSet<Request>()

/** `response` when this isolate made it here, else a copy whose headers can be set. */
export const response = (response: Response): Response => {
  if (responses.has(response)) return response
  const copy = new Response(response.body, response)
  responses.add(copy)
  return copy
}

/** A copy of `request` whose headers can be set (`takeRequest`). */
export const request = (request: Request): Request => {
  const copy = new Request(request)
  requests.add(copy)
  return copy
}

/**
 * Whether `request` was made by `request` here, and not taken yet: its headers
 * may then be set in place, once. A second taker (the same request forwarded
 * again, to a canary or by a step of the user's own) copies it as usual.
 */
export const takeRequest = (request: Request): boolean => requests.delete(request)
