// A real OpenID Connect provider for the review console's browser tests, over HTTPS with
// the test CA's server certificate. Its development login page accepts any name with any
// password; the test's accounts differ only in their groups claim.
//   node provider.mjs PORT CERT KEY REDIRECT_URI CLIENT_SECRET
import https from 'node:https';
import fs from 'node:fs';
import Provider from 'oidc-provider';

const [port, cert, key, redirectUri, secret] = process.argv.slice(2);
const issuer = `https://localhost:${port}`;
const groups = { olga: ['security-auditors'] };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'dbtape-review',
    client_secret: secret,
    redirect_uris: [redirectUri],
    response_types: ['code'],
    grant_types: ['authorization_code'],
  }],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'] },
  scopes: ['openid', 'email', 'groups'],
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, groups: groups[id] ?? [] };
      },
    };
  },
});

https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, provider.callback())
  .listen(Number(port), '127.0.0.1', () => console.log(`ready ${issuer}`));
