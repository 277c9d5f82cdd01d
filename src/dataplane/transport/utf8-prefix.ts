/**
 * Error messages on the wire (NBD error chunks, TBP error replies) are UTF-8
 * with a byte limit; a longer message is cut, never refused.
 */

/** `text` as UTF-8, cut to at most `maxBytes` on a character boundary (no half character at the end). */
export function utf8Prefix(text: string, maxBytes: number): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return bytes;
  // Back off over UTF-8 continuation bytes (10xxxxxx) to the start of the character that does not fit.
  let end = maxBytes;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
