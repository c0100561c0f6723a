// BENCHMARK ONLY: panva's oidc-provider (the certified OpenID provider the interop tests
// use, from tests/interop/oidc-provider/node_modules) set up for the peer baseline of
// bench/idp-vs-oidc-provider.sh: one confidential client whose client-credentials grant
// is answered exactly like ferrobank's, i.e. `client_secret_basic` and an RS256-signed JWT
// access token (2048-bit key, audience `banking-api`, 300 s), so that both providers sign
// one RSA-2048 signature per grant.
//
//   BENCH_CLIENT_SECRET=... node bench/oidc-provider-cc.mjs [PORT]   # 0 (default) = random
//
// Prints `listening http://127.0.0.1:PORT` once it accepts requests; the token endpoint is
// `{that}/token`, the client `bench-cc`. Stops on SIGINT/SIGTERM. The interop server
// (tests/interop/oidc-provider/server.mjs) does not fit as is: its client authenticates
// with `client_secret_post` and gets an opaque token unless it names a resource.
//
// Nothing here is fit for production: in-memory store, plain HTTP on loopback.
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';

const PROVIDER_MODULE = new URL(
  '../tests/interop/oidc-provider/node_modules/oidc-provider/lib/index.js',
  import.meta.url,
);
const { default: Provider } = await import(PROVIDER_MODULE.href);

const CLIENT_ID = 'bench-cc';
const CLIENT_SECRET = process.env.BENCH_CLIENT_SECRET;
const RESOURCE = 'urn:ferrobank:banking-api';
const ACCESS_TOKEN_TTL_S = 300;

if (!CLIENT_SECRET || CLIENT_SECRET.length < 16) {
  console.error('set BENCH_CLIENT_SECRET (16 characters or more)');
  process.exit(2);
}
const requested = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number.parseInt(requested, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`invalid port ${JSON.stringify(requested)}`);
  process.exit(2);
}

// A fresh RSA-2048 key per start, like a fresh ferrobank realm key.
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    jwks: { keys: [signingKey] },
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      // Every client-credentials grant is for the banking API, so every token is a JWT
      // (RFC 9068) signed with RS256, as ferrobank's are, without a `resource` parameter.
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => false,
        getResourceServerInfo: () => ({
          audience: 'banking-api',
          scope: 'accounts:read transfers:write',
          accessTokenFormat: 'jwt',
          accessTokenTTL: ACCESS_TOKEN_TTL_S,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    ttl: { ClientCredentials: ACCESS_TOKEN_TTL_S },
  });
  server.on('request', provider.callback());
  console.log(`listening ${issuer}`);
});

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
