import type { ApiTokenService } from 'nestjs-api-token';

/** The app id the demo's own token belongs to. */
export const DEMO_APP_ID = '00000000-0000-4000-8000-00000000de70';

/**
 * What the demo prints about its token. The token itself only when it was just created: printed on
 * every start, it would land in every log collector; later starts show it masked.
 */
export async function demoTokenNotice(tokens: ApiTokenService, port: number): Promise<string> {
  const [existing] = await tokens.list({ appId: DEMO_APP_ID, scope: 'app' });
  if (existing) {
    return (
      `\nDemo listening on port ${port}, with its demo token ${existing.maskedToken} (shown only when created).\n` +
      `Create another with:\n\n  npm run --silent token -- create --scope app\n\n` +
      adminNotice(port)
    );
  }
  const { token } = await tokens.create({ scope: 'app', appId: DEMO_APP_ID });
  return (
    `\nDemo listening on port ${port}, with a newly created demo token (shown this once); try:\n\n` +
    `  curl -H 'Authorization: Bearer ${token}' http://localhost:${port}/app/whoami\n\n` +
    adminNotice(port)
  );
}

/**
 * How to create a token through the admin API. The admin token comes from the command line into a
 * shell variable, so neither the demo's output nor the shell history holds one.
 */
export function adminNotice(port: number): string {
  return (
    `Manage tokens over HTTP with the admin API (OpenAPI and Swagger UI at http://localhost:${port}/docs), with an admin token:\n\n` +
    `  ADMIN_TOKEN=$(npm run --silent token -- create --scope admin)\n` +
    `  curl -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \\\n` +
    `       -d '{"scope":"app","expiresInSeconds":86400}' http://localhost:${port}/admin/tokens\n\n`
  );
}
