// A real OpenID Provider (node-oidc-provider) for flask-tokenguard's tests. Never for production:
// in-memory storage, development login and consent pages, fixed test client secrets.
//
//   node server.js [--port N] [--redirect-uris JSON] [--post-logout-redirect-uris JSON]
//                  [--backchannel-logout-uri URL] [--access-ttl S] [--id-token-ttl S]
//                  [--refresh-ttl S] [--clock-tolerance S]
//
// Every option may be given in the environment instead (PORT, REDIRECT_URIS,
// POST_LOGOUT_REDIRECT_URIS, BACKCHANNEL_LOGOUT_URI, ACCESS_TTL, ID_TOKEN_TTL, REFRESH_TTL,
// CLOCK_TOLERANCE; also CONFIDENTIAL_CLIENT_ID, CONFIDENTIAL_CLIENT_SECRET, PUBLIC_CLIENT_ID);
// the command line wins. Lifetimes are in seconds; the clock tolerance defaults to 0.
// Port 0 (the default) takes a free port. Listens on 127.0.0.1 only. Prints one line
// "READY <issuer>" on stdout once listening; everything else goes to stderr. Exits 0 on SIGTERM.
//
// Test-only routes, answered only to loopback peers:
//   GET  /__test/stats   {"refresh_requests", "presentations": {sha256 hex: count},
//                         "max_presentations", "client_credentials_requests"}
//   POST /__test/reset   zeroes those counters (tokens and sessions are kept)

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

// node-oidc-provider prints its notices with console.info (stdout); stdout is kept for the
// READY line alone, so a reader waiting for it sees nothing else.
console.info = console.error;
console.log = console.error;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'redirect-uris': { type: 'string' },
    'post-logout-redirect-uris': { type: 'string' },
    'backchannel-logout-uri': { type: 'string' },
    'access-ttl': { type: 'string' },
    'id-token-ttl': { type: 'string' },
    'refresh-ttl': { type: 'string' },
    'clock-tolerance': { type: 'string' },
  },
  allowPositionals: false,
});

function setting(name, envName, fallback) {
  const value = args[name] ?? process.env[envName];
  return value === undefined || value === '' ? fallback : value;
}

function seconds(name, envName, fallback, minimum = 1) {
  const value = Number(setting(name, envName, String(fallback)));
  if (!Number.isInteger(value) || value < minimum) {
    throw new Error(`${name} must be a whole number of seconds, at least ${minimum}`);
  }
  return value;
}

function uriList(name, envName, fallback) {
  const value = JSON.parse(setting(name, envName, JSON.stringify(fallback)));
  if (!Array.isArray(value) || !value.every((uri) => typeof uri === 'string')) {
    throw new Error(`${name} must be a JSON list of URIs`);
  }
  return value;
}

const port = Number(setting('port', 'PORT', '0'));
const redirectUris = uriList('redirect-uris', 'REDIRECT_URIS', ['http://127.0.0.1:9/callback']);
const postLogoutRedirectUris = uriList(
  'post-logout-redirect-uris',
  'POST_LOGOUT_REDIRECT_URIS',
  [],
);
const backchannelLogoutUri = setting('backchannel-logout-uri', 'BACKCHANNEL_LOGOUT_URI', undefined);
const accessTtl = seconds('access-ttl', 'ACCESS_TTL', 20);
const idTokenTtl = seconds('id-token-ttl', 'ID_TOKEN_TTL', accessTtl);
const refreshTtl = seconds('refresh-ttl', 'REFRESH_TTL', 24 * 3600);
// node-oidc-provider accepts a token up to clockTolerance seconds past its expiry (15 by
// default): 0 here, so an access token is refused as soon as its lifetime is over.
const clockTolerance = seconds('clock-tolerance', 'CLOCK_TOLERANCE', 0, 0);

const confidentialClientId = process.env.CONFIDENTIAL_CLIENT_ID || 'tokenguard-confidential';
const confidentialClientSecret = process.env.CONFIDENTIAL_CLIENT_SECRET
  || 'tokenguard-test-secret-not-for-production';
const publicClientId = process.env.PUBLIC_CLIENT_ID || 'tokenguard-public';

// -- the counting oracle ------------------------------------------------------------------

const stats = {
  refreshRequests: 0,
  presentations: new Map(),
  clientCredentialsRequests: 0,
};

function fingerprint(token) {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

// Counts what the provider itself parsed from the form body (ctx.oidc.body), so the count and
// the provider never disagree about which token a request carried. Every presentation counts,
// whatever the outcome: a refused reuse is a presentation too.
function count(body) {
  if (!body || typeof body !== 'object') {
    return;
  }
  if (body.grant_type === 'refresh_token') {
    stats.refreshRequests += 1;
    if (typeof body.refresh_token === 'string' && body.refresh_token !== '') {
      const key = fingerprint(body.refresh_token);
      stats.presentations.set(key, (stats.presentations.get(key) ?? 0) + 1);
    }
  } else if (body.grant_type === 'client_credentials') {
    stats.clientCredentialsRequests += 1;
  }
}

function statsJson() {
  return {
    refresh_requests: stats.refreshRequests,
    presentations: Object.fromEntries(stats.presentations),
    max_presentations: Math.max(0, ...stats.presentations.values()),
    client_credentials_requests: stats.clientCredentialsRequests,
  };
}

function loopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1';
}

// -- the provider -------------------------------------------------------------------------

function account(accountId) {
  return {
    accountId,
    async claims() {
      return {
        sub: accountId,
        name: accountId,
        email: `${accountId}@example.test`,
        email_verified: true,
      };
    },
  };
}

// An RSA signing key made at start: the tests never need the same key twice.
const signingKey = {
  ...generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  use: 'sig',
  alg: 'RS256',
};

function clients() {
  const confidential = {
    client_id: confidentialClientId,
    client_secret: confidentialClientSecret,
    // node-oidc-provider accepts client_secret_post from a client registered with
    // client_secret_basic, and the other way round (lib/shared/client_auth.js).
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutRedirectUris,
  };
  if (backchannelLogoutUri) {
    confidential.backchannel_logout_uri = backchannelLogoutUri;
    confidential.backchannel_logout_session_required = true;
  }
  const pub = {
    client_id: publicClientId,
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: redirectUris,
    post_logout_redirect_uris: postLogoutRedirectUris,
  };
  return [confidential, pub];
}

function configuration() {
  return {
    clients: clients(),
    clockTolerance,
    // Outgoing requests (back-channel logout) go through a dispatcher that refuses special-use
    // addresses, loopback included (SSRF protection, lib/helpers/fetch_request.js). Every
    // receiver of this test server is on 127.0.0.1: drop that dispatcher.
    fetch: (url, options) => globalThis.fetch(url, { ...options, dispatcher: undefined }),
    jwks: { keys: [signingKey] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    findAccount: async (ctx, sub) => account(sub),
    claims: {
      openid: ['sub'],
      profile: ['name'],
      email: ['email', 'email_verified'],
    },
    scopes: ['openid', 'profile', 'email', 'offline_access'],
    pkce: {
      // PKCE for every client, not only public ones; S256 is the only method version 9 knows.
      required: () => true,
    },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      introspection: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      backchannelLogout: { enabled: true },
      clientCredentials: { enabled: true },
      userinfo: { enabled: true },
    },
    // Every refresh rotates; a consumed refresh token presented again revokes the grant
    // (lib/actions/grants/refresh_token.js). No grace window exists.
    rotateRefreshToken: true,
    // A refresh token for the code grant when offline_access was granted. The authorization
    // endpoint drops offline_access unless the request carries prompt=consent
    // (lib/actions/authorization/scopes.js, OpenID Connect Core 1.0 section 11).
    issueRefreshToken: async (ctx, client, code) => (
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access')
    ),
    ttl: {
      AccessToken: accessTtl,
      ClientCredentials: accessTtl,
      IdToken: idTokenTtl,
      RefreshToken: refreshTtl,
      AuthorizationCode: 60,
      Interaction: 600,
      Session: 24 * 3600,
      Grant: refreshTtl,
    },
  };
}

const server = createServer();

function listen() {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve(server.address().port);
    });
  });
}

const actualPort = await listen();
const issuer = `http://127.0.0.1:${actualPort}`;
const provider = new Provider(issuer, configuration());

provider.on('server_error', (ctx, error) => {
  console.error('server_error', ctx.method, ctx.path, error);
});
provider.on('backchannel.error', (ctx, error, client) => {
  console.error('backchannel.error', client.clientId, error.message);
});

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test/')) {
    if (!loopback(ctx.req.socket.remoteAddress)) {
      ctx.status = 404;
      return;
    }
    if (ctx.path === '/__test/stats' && ctx.method === 'GET') {
      ctx.set('Cache-Control', 'no-store');
      ctx.body = statsJson();
      return;
    }
    if (ctx.path === '/__test/reset' && ctx.method === 'POST') {
      stats.refreshRequests = 0;
      stats.presentations.clear();
      stats.clientCredentialsRequests = 0;
      ctx.status = 204;
      return;
    }
    ctx.status = 404;
    return;
  }
  try {
    await next();
  } finally {
    // After the token endpoint ran: its errors are answered inside it, so this runs for
    // every outcome, before the response is written.
    if (ctx.method === 'POST' && ctx.oidc?.route === 'token') {
      count(ctx.oidc.body);
    }
  }
});

server.on('request', provider.callback());

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);

process.stdout.write(`READY ${issuer}\n`);
