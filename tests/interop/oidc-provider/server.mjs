// TEST ONLY: an independent, certified OpenID provider (panva's oidc-provider) that
// crates/adapters/tests/oidc_interop.rs obtains real access tokens from, so that
// ferrobank's token validator is checked against tokens it did not mint itself.
//
//   node server.mjs [PORT]       # or PORT=... node server.mjs; 0 (the default) = random
//
// Prints `listening http://127.0.0.1:PORT` on stdout once it accepts requests; the
// issuer is exactly that URL. Other lines (oidc-provider's notices) may precede it.
//
// Nothing here is fit for production: an in-memory store, a fixed client secret, plain
// HTTP on loopback.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

import Provider, { errors } from 'oidc-provider';

const CLIENT_ID = 'ferrobank-interop';
const CLIENT_SECRET = 'test-only-interop-secret-not-a-real-one';

// Resource indicators (RFC 8707 §2: absolute URIs) and the audience of their tokens.
// `other-api` exists so that a token genuinely issued for another service can be tried.
const RESOURCE_SERVERS = {
  'urn:ferrobank:banking-api': { audience: 'banking-api', scope: 'accounts:read transfers:write' },
  'urn:ferrobank:other-api': { audience: 'other-api', scope: 'reports:read' },
};

const ACCESS_TOKEN_TTL_S = 300;

const requested = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number.parseInt(requested, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port ${JSON.stringify(requested)}`);
  process.exit(2);
}

// A fresh signing key per start, so nothing secret is committed and no key is shared
// with another run. (oidc-provider's own fallback is a fixed development key set,
// published in the package: a verifier could not tell its tokens from anyone's.)
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

// The issuer has to carry the real port, known only once the socket is bound: bind
// first, then build the provider and hand it the requests.
const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  // An `http:` issuer is accepted by oidc-provider as a valid web URI in every mode; the
  // only development-only part used here is its default in-memory adapter (it warns on
  // stderr), which is what a throwaway test provider wants.
  const provider = new Provider(issuer, {
    jwks: { keys: [signingKey] },
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
      },
    ],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      // With a resource indicator, access tokens are RFC 9068 JWTs for that audience.
      resourceIndicators: {
        enabled: true,
        defaultResource: () => undefined,
        useGrantedResource: () => false,
        getResourceServerInfo(_ctx, resourceIndicator) {
          const server = RESOURCE_SERVERS[resourceIndicator];
          if (!server) {
            throw new errors.InvalidTarget();
          }
          return {
            ...server,
            accessTokenFormat: 'jwt',
            accessTokenTTL: ACCESS_TOKEN_TTL_S,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    ttl: {
      ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ACCESS_TOKEN_TTL_S,
    },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
