/**
 * The client a request is counted for, by rate limits (RateLimits.ts) and by
 * auth's login throttle: its verified user, else its address bucket. A module
 * of its own, with no Effect service in it, so that importing the key bundles
 * nothing else (esbuild keeps a module's service classes with any export).
 */
import type * as Identity from "./Identity.ts"

const hextet = /^[0-9a-f]{1,4}$/
const ipv4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/

/** The eight 16-bit groups of an IPv6 address (`::`, an embedded IPv4 tail and a zone allowed), if it is one. */
const ipv6Groups = (address: string): ReadonlyArray<number> | undefined => {
  const halves = address.toLowerCase().split("%", 1)[0]!.split("::")
  if (halves.length > 2) return undefined
  const split = (part: string) => (part === "" ? [] : part.split(":"))
  const head = split(halves[0]!)
  const tail = halves.length === 2 ? split(halves[1]!) : head
  const last = tail.at(-1)
  const v4 = last === undefined ? null : ipv4.exec(last)
  if (v4 !== null) {
    const octets = v4.slice(1).map(Number)
    if (octets.some((octet) => octet > 255)) return undefined
    tail.splice(-1, 1, ((octets[0]! << 8) | octets[1]!).toString(16), ((octets[2]! << 8) | octets[3]!).toString(16))
  }
  const groups = halves.length === 2 ? [...head, ...tail] : head
  const missing = 8 - groups.length
  if (!groups.every((group) => hextet.test(group)) || (halves.length === 2 ? missing < 1 : missing !== 0)) return undefined
  const values = groups.map((group) => parseInt(group, 16))
  return halves.length === 2 ? [...values.slice(0, head.length), ...new Array<number>(missing).fill(0), ...values.slice(head.length)] : values
}

/**
 * The bucket an address is counted in. IPv6 clients are counted by their /64
 * (`2001:db8:1:2::/64`): one subscriber is usually given a whole /64 and can
 * rotate through its addresses at will, so counting single addresses would
 * give it 2^64 buckets. IPv4-mapped IPv6 (`::ffff:192.0.2.1`) counts as its
 * IPv4 address; IPv4 and anything unparsable count as they are.
 */
export const addressBucket = (address: string): string => {
  const groups = ipv6Groups(address.trim())
  if (groups === undefined) return address
  if (groups.slice(0, 5).every((group) => group === 0) && groups[5] === 0xffff) {
    return [groups[6]! >> 8, groups[6]! & 255, groups[7]! >> 8, groups[7]! & 255].join(".")
  }
  return `${groups.slice(0, 4).map((group) => group.toString(16)).join(":")}::/64`
}

/** The client a request is counted for: its verified user, else its address (IPv6 by /64, see `addressBucket`). */
export const rateLimitKey = (identity: Identity.Identity, request: { readonly headers: Headers }): string => {
  if (identity.kind === "user") return `user:${identity.sub}`
  const address = request.headers.get("cf-connecting-ip")
  return `ip:${address === null ? "unknown" : addressBucket(address)}`
}
