// A real OpenID Connect provider for Sluice's identity tests: the certified `oidc-provider`
// package (v9), configured like a company IdP would be for an API gateway.
//
//   node tests/oidc/provider.mjs PORT KEYS_FILE [--rotate]
//
// - issuer http://127.0.0.1:PORT; discovery, JWKS, token, authorization endpoints are the
//   package's own.
// - JWT access tokens (resource indicators, accessTokenFormat 'jwt') for the resources
//   https://sluice.test/api (aud "sluice", the default) and https://other.test/api (aud "other-api"), with `email` and `groups`
//   claims (in ID tokens too); client credentials (clients `svc-*`) and authorization code with PKCE (client
//   `console`, devInteractions login: any password; the login name picks the groups).
// - Signing keys are RSA (RS256), kept in KEYS_FILE so a restart with `--rotate` publishes a
//   new key first (new tokens carry its kid) while still publishing the old one.
// - Test-only routes under /__test/ (not part of any provider): `sign` signs arbitrary claims
//   (with the provider's key, a key never published, HS256 keyed with the provider's public key,
//   or alg none) so that every check Sluice makes can be driven with real key material; `stats`
//   counts JWKS fetches.
import { generateKeyPairSync, createPrivateKey, createPublicKey, createHmac, sign as rsaSign, randomUUID } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const keysFile = process.argv[3];
const rotate = process.argv.includes('--rotate');
const issuer = `http://127.0.0.1:${port}`;

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}
let keys = existsSync(keysFile) ? JSON.parse(readFileSync(keysFile, 'utf8')) : [];
if (keys.length === 0 || rotate) keys = [newKey(), ...keys];
writeFileSync(keysFile, JSON.stringify(keys));
// Where a slow start spent its time (the test's failure message prints this log).
console.log(`keys ready after ${process.uptime().toFixed(2)} s`);

// Who is who: groups per client (client credentials) and per login name (code flow).
const CLIENT_USERS = {
  'svc-eng': { email: 'svc-eng@example.com', groups: ['eng'] },
  'svc-admin': { email: 'svc-admin@example.com', groups: ['ml-platform-admins', 'eng'] },
  'svc-marketing': { email: 'svc-marketing@example.com', groups: ['marketing'] },
};
const LOGIN_GROUPS = { alice: ['ml-platform-admins'], bob: ['eng'], mallory: ['marketing'] };
const account = (id) => ({ email: `${id}@example.com`, groups: LOGIN_GROUPS[id] ?? [] });

// Resource indicators must be absolute URIs; the tokens' `aud` is the audience given here.
const SLUICE = 'https://sluice.test/api';
const resources = {
  [SLUICE]: { audience: 'sluice', scope: 'api' },
  'https://other.test/api': { audience: 'other-api', scope: 'api' },
};

const provider = new Provider(issuer, {
  clients: [
    ...Object.keys(CLIENT_USERS).map((id) => ({
      client_id: id,
      client_secret: `${id}-secret`,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    })),
    {
      client_id: 'console',
      client_secret: 'console-secret',
      grant_types: ['authorization_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'],
    },
  ],
  jwks: { keys },
  // The console's sign-in reads `email` and `groups` from the ID token of the code flow.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  scopes: ['openid', 'email', 'profile', 'api'],
  claims: { openid: ['sub'], email: ['email'], profile: ['groups'] },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, ...account(id) }),
  }),
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => SLUICE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const r = resources[resource];
        if (!r) throw new Error(`unknown resource ${resource}`);
        return { ...r, accessTokenFormat: 'jwt', accessTokenTTL: 600, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    if (token.accountId) return account(token.accountId);
    return CLIENT_USERS[token.clientId] ?? {};
  },
  loadExistingGrant: async (ctx) => {
    // Consent is implied for the test client: grant what it asks.
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile api');
    grant.addResourceScope(SLUICE, 'api');
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

// The console client's redirect URI is Sluice's `/console/callback` on whichever loopback port
// the test gateway got (the port is only known after the provider is up).
const redirectUriAllowed = provider.Client.prototype.redirectUriAllowed;
provider.Client.prototype.redirectUriAllowed = function allowed(uri) {
  if (this.clientId === 'console' && /^http:\/\/127\.0\.0\.1:\d+\/console\/callback$/.test(uri)) return true;
  return redirectUriAllowed.call(this, uri);
};

// Test-only routes and a JWKS fetch counter.
let jwksFetches = 0;
const b64 = (v) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
provider.use(async (ctx, next) => {
  if (ctx.path === '/jwks') jwksFetches += 1;
  if (ctx.path === '/__test/stats') {
    ctx.body = { jwks_fetches: jwksFetches, kids: keys.map((k) => k.kid) };
    return;
  }
  if (ctx.path === '/__test/sign' && ctx.method === 'POST') {
    const chunks = [];
    for await (const c of ctx.req) chunks.push(c);
    const { claims, mode = 'provider' } = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    const now = Math.floor(Date.now() / 1000);
    const payload = { iss: issuer, aud: 'sluice', iat: now, exp: now + 300, ...claims };
    for (const [k, v] of Object.entries(payload)) if (v === null) delete payload[k];
    const current = keys[0];
    let token;
    if (mode === 'none') {
      token = `${b64({ alg: 'none', kid: current.kid })}.${b64(payload)}.`;
    } else if (mode === 'hs256-public-key') {
      const pem = createPublicKey({ key: current, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
      const input = `${b64({ alg: 'HS256', kid: current.kid, typ: 'JWT' })}.${b64(payload)}`;
      token = `${input}.${createHmac('sha256', pem).update(input).digest('base64url')}`;
    } else {
      const key = mode === 'unpublished' ? newKey() : current;
      const input = `${b64({ alg: 'RS256', kid: key.kid, typ: 'JWT' })}.${b64(payload)}`;
      const sig = rsaSign('sha256', Buffer.from(input), createPrivateKey({ key, format: 'jwk' }));
      token = `${input}.${sig.toString('base64url')}`;
    }
    ctx.body = { token };
    return;
  }
  await next();
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer} after ${process.uptime().toFixed(2)} s`);
});
