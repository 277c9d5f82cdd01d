/**
 * Human sizes: "10GiB", "512MiB", "1T", "4096", "64k". Binary units throughout
 * (as the original Torus and most storage tools treat "G" for disks); "GB" is
 * accepted as 10^9 for people who mean it.
 */

const BINARY: Record<string, number> = {
  '': 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
};

export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$/i.exec(text);
  if (!match) throw new RangeError(`not a size: "${text}" (expected e.g. 10GiB, 512MiB, 1T, 4096)`);
  const [, num, unitRaw, suffixRaw] = match;
  const unit = unitRaw.toLowerCase();
  const suffix = suffixRaw.toLowerCase();
  // "GB"/"MB" mean powers of ten; "G", "GiB" mean powers of two.
  const multiplier = suffix === 'b' && unit !== '' ? 1000 ** ' kmgtp'.indexOf(unit) : BINARY[unit];
  const bytes = Number(num) * multiplier;
  if (!Number.isSafeInteger(bytes))
    throw new RangeError(`size out of range or fractional byte count: "${text}"`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let i = 0;
  while (value >= 1024 && i < units.length - 1) {
    value /= 1024;
    i++;
  }
  const text =
    i === 0 || Number.isInteger(value) ? String(value) : value.toFixed(1).replace(/\.0$/, '');
  return `${text} ${units[i]}`;
}
