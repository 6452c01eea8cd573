// A test OpenID provider: the npm `oidc-provider` package, with its development signing key
// (a test key, made at start, never kept). Besides the provider's own endpoints (discovery,
// `/jwks`), `GET /test/id-token?sub=alice[&may_act=<json>][&ttl=<secs>]` has the provider mint
// and sign an ID token for the test user, standing in for a login the tests cannot click through.
// Usage: node issuer.mjs PORT   (prints "ready <issuer>" when listening)
import Provider from 'oidc-provider';

const port = Number(process.argv[2]);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'ztinfra-console',
    client_secret: 'test-only-secret',
    redirect_uris: ['http://127.0.0.1/callback'],
    id_token_signed_response_alg: 'RS256',
  }],
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
  ttl: { IdToken: 300 },
});

provider.use(async (ctx, next) => {
  if (ctx.path !== '/test/id-token') return next();
  const sub = ctx.query.sub;
  if (!sub) { ctx.status = 400; ctx.body = 'sub?'; return undefined; }
  const client = await provider.Client.find('ztinfra-console');
  const token = new provider.IdToken({ sub }, { client });
  token.scope = 'openid';
  if (ctx.query.may_act) token.set('may_act', JSON.parse(ctx.query.may_act));
  const ttl = ctx.query.ttl ? Number(ctx.query.ttl) : 300;
  ctx.body = await token.issue({ use: 'idtoken', expiresAt: Math.floor(Date.now() / 1000) + ttl });
  return undefined;
});

provider.listen(port, '127.0.0.1', () => console.log(`ready ${issuer}`));
