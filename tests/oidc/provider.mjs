// A real OIDC provider on loopback for Callgate's integration tests.
//
// Issues JWT access tokens through client_credentials with resource indicators (RFC 8707).
// Prints one JSON line {"issuer": "..."} once listening, then serves until killed.
// Usage: node provider.mjs [port]
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || 0);
const RESOURCE = 'https://callgate.test';

const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });

// Client id → groups carried in the token, and the signing algorithm its tokens use.
const CLIENTS = {
  'billing-bot': { groups: ['billing-ops'], alg: 'ES256' },
  'support-bot': { groups: ['support'], alg: 'RS256' },
  'nobody-bot': { groups: [], alg: 'ES256' },
};

const server = (await import('node:http')).createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  jwks: { keys: [{ ...ec, kid: 'ec-1', alg: 'ES256', use: 'sig' }, { ...rsa, kid: 'rsa-1', alg: 'RS256', use: 'sig' }] },
  clients: Object.keys(CLIENTS).map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => ({
        scope: 'functions:call functions:read',
        audience: 'callgate',
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: CLIENTS[client.clientId]?.alg || 'ES256' } },
      }),
    },
  },
  extraTokenClaims: (ctx, token) => ({ groups: CLIENTS[token.clientId]?.groups || [] }),
});
provider.proxy = false;
server.on('request', provider.callback());
console.log(JSON.stringify({ issuer }));
