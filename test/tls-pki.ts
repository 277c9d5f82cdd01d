/**
 * A throw-away PKI for NBD-over-TLS tests and the TLS bench, made with
 * openssl in a directory of the caller's (no key is ever committed):
 *   server/  ca-cert.pem server-cert.pem server-key.pem   (torusd --tls-certificates)
 *   client/  ca-cert.pem client-cert.pem client-key.pem   (libnbd ?tls-certificates=, qemu tls-creds-x509)
 *   ca-only/ ca-cert.pem                                  (a client without a certificate)
 *   foreign/ ca-cert.pem + a client certificate signed by another CA
 *   keys.psk alice:HEX (psktool format); wrong.psk alice:another key
 */
import { randomBytes } from 'node:crypto';
import { copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { runOk } from './tools.js';

export interface TestPki {
  server: string;
  client: string;
  caOnly: string;
  foreign: string;
  psk: string;
  wrongPsk: string;
}

export async function makeTestPki(dir: string): Promise<TestPki> {
  const p = (...parts: string[]) => join(dir, ...parts);
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  const ca = async (name: string) =>
    runOk('openssl', [
      'req',
      '-x509',
      ...ec,
      '-keyout',
      p(`${name}-key.pem`),
      '-out',
      p(`${name}-cert.pem`),
      '-days',
      '2',
      '-subj',
      `/CN=${name}`,
    ]);
  const leaf = async (name: string, signer: string, ext: string) => {
    await runOk('openssl', [
      'req',
      ...ec,
      '-keyout',
      p(`${name}-key.pem`),
      '-out',
      p(`${name}.csr`),
      '-subj',
      `/CN=${name}`,
    ]);
    await writeFile(p(`${name}.ext`), ext);
    await runOk('openssl', [
      'x509',
      '-req',
      '-in',
      p(`${name}.csr`),
      '-CA',
      p(`${signer}-cert.pem`),
      '-CAkey',
      p(`${signer}-key.pem`),
      '-CAcreateserial',
      '-out',
      p(`${name}-cert.pem`),
      '-days',
      '2',
      '-extfile',
      p(`${name}.ext`),
    ]);
  };
  await ca('ca');
  await ca('other-ca');
  await leaf(
    'server',
    'ca',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  );
  await leaf('client', 'ca', 'extendedKeyUsage=clientAuth\n');
  await leaf('intruder', 'other-ca', 'extendedKeyUsage=clientAuth\n');
  const layout: Record<string, Record<string, string>> = {
    server: {
      'ca-cert.pem': 'ca-cert.pem',
      'server-cert.pem': 'server-cert.pem',
      'server-key.pem': 'server-key.pem',
    },
    client: {
      'ca-cert.pem': 'ca-cert.pem',
      'client-cert.pem': 'client-cert.pem',
      'client-key.pem': 'client-key.pem',
    },
    'ca-only': { 'ca-cert.pem': 'ca-cert.pem' },
    foreign: {
      'ca-cert.pem': 'ca-cert.pem',
      'client-cert.pem': 'intruder-cert.pem',
      'client-key.pem': 'intruder-key.pem',
    },
  };
  for (const [sub, files] of Object.entries(layout)) {
    await mkdir(p(sub));
    for (const [to, from] of Object.entries(files)) await copyFile(p(from), p(sub, to));
  }
  await writeFile(p('keys.psk'), `alice:${randomBytes(32).toString('hex')}\n`);
  await writeFile(p('wrong.psk'), `alice:${randomBytes(32).toString('hex')}\n`);
  return {
    server: p('server'),
    client: p('client'),
    caOnly: p('ca-only'),
    foreign: p('foreign'),
    psk: p('keys.psk'),
    wrongPsk: p('wrong.psk'),
  };
}
