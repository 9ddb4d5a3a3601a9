/** One hostile `Authorization` header value, as the bytes sent on the wire. */
export interface HostileValue {
  name: string;
  value: Buffer;
}

const text = (s: string) => Buffer.from(s, 'utf8');
const bytes = (...parts: (string | number[])[]) =>
  Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p, 'latin1') : Buffer.from(p))));

/**
 * Authorization values that must all be refused with a 4xx and, because none can be a valid token,
 * with no Redis or database I/O: empty, scheme only, whitespace variants, tabs, very long, control
 * and non-ASCII bytes, glob characters, SQL fragments, JSON, unicode look-alikes.
 */
export const HOSTILE_AUTHORIZATION: HostileValue[] = [
  { name: 'empty', value: text('') },
  { name: 'scheme only', value: text('Bearer') },
  { name: 'scheme and trailing space', value: text('Bearer ') },
  { name: 'lower-case scheme only', value: text('bearer') },
  { name: 'spaces only', value: text('     ') },
  { name: 'padded scheme only', value: text('   Bearer   ') },
  { name: 'tab separator', value: text('Bearer\tapp-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'tabs and spaces only', value: text('Bearer \t \t ') },
  { name: 'many tabs', value: text(`BEARER${'\t'.repeat(100)}`) },
  { name: 'colon instead of space', value: text('Bearer:app-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'basic scheme', value: text('Basic dXNlcjpwYXNzd29yZA==') },
  { name: 'other scheme', value: text('Token app-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'three words', value: text('Bearer app-abc def ghi') },
  { name: '256 characters', value: text(`Bearer ${'a'.repeat(256)}`) },
  { name: '255 b64token characters then 12,000 "="', value: text(`Bearer ${'x'.repeat(255)}${'='.repeat(12_000)}`) },
  { name: '250 characters then 6 "="', value: text(`Bearer ${'x'.repeat(250)}======`) },
  { name: '8 KB', value: text(`Bearer ${'a'.repeat(8_000)}`) },
  { name: '20 KB (over the header limit)', value: text(`Bearer ${'a'.repeat(20_000)}`) },
  { name: '70 KB', value: text(`Bearer ${'A'.repeat(70_000)}`) },
  { name: '5000 spaces then a glob', value: text(`Bearer${' '.repeat(5_000)}*`) },
  { name: 'NUL byte', value: bytes('Bearer app-', [0], 'AAAA') },
  { name: 'control bytes', value: bytes('Bearer app-', [1, 2, 3], 'AAAA') },
  { name: 'DEL byte', value: bytes('Bearer app-', [0x7f], 'AAAA') },
  { name: 'ANSI escape', value: bytes('Bearer app-', [0x1b], '[31mAAAA') },
  { name: 'bare CR', value: text('Bearer app-a*c\rX-Injected: 1') },
  { name: 'bare LF', value: text('Bearer app-a*c\nX-Injected: 1') },
  { name: 'folded line', value: text('Bearer a*\r\n continued') },
  { name: 'second Authorization header', value: text('Bearer *\r\nAuthorization: Bearer [a-z]*') },
  { name: 'glob star', value: text('Bearer *') },
  { name: 'glob class', value: text('Bearer [a-z]*') },
  { name: 'glob question mark', value: text('Bearer app-????????????????????????') },
  { name: 'escaped glob', value: text('Bearer app-\\*') },
  { name: 'SQL quote', value: text("Bearer ' OR '1'='1") },
  { name: 'SQL statement', value: text('Bearer app-x;DROP TABLE api_tokens;--') },
  { name: 'SQL union', value: text("Bearer app-x'UNION SELECT token FROM api_tokens--") },
  { name: 'JSON token', value: text('Bearer {"token":"app-AAAAAAAAAAAAAAAAAAAAAAAA"}') },
  { name: 'JSON header', value: text('{"authorization":"Bearer app-AAAAAAAAAAAAAAAAAAAAAAAA"}') },
  { name: 'Cyrillic e in the scheme', value: text('B\u0435arer app-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'Cyrillic a in the token', value: text('Bearer \u0430pp-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'fullwidth token', value: text('Bearer \uff41\uff50\uff50-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'zero-width space', value: text('Bearer app-\u200bAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'no-break space separator', value: text('Bearer\u00a0app-AAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'right-to-left override', value: text('Bearer app-\u202eAAAAAAAAAAAAAAAAAAAAAAA') },
  { name: 'emoji', value: text('Bearer \u{1f511}') },
  { name: 'latin-1 byte', value: bytes('Bearer app-', [0xff], 'AAAA') },
  { name: 'invalid UTF-8', value: bytes('Bearer app-', [0xc3, 0x28], 'AAAA') },
  { name: 'padding only', value: text('Bearer ====') },
  { name: 'percent-encoded NUL', value: text('Bearer app-%00AAAA') },
  { name: 'percent-encoded CRLF', value: text('Bearer app-AAAA%0d%0aX-Injected:%201') },
  { name: 'colon in token', value: text('Bearer app-AAAA:BBBB') },
  { name: 'HTML', value: text('Bearer <script>alert(1)</script>') },
  { name: 'JNDI lookup', value: text('Bearer ${jndi:ldap://127.0.0.1/a}') },
  { name: 'Redis protocol', value: text('Bearer *1\r\n$8\r\nFLUSHALL') },
];
