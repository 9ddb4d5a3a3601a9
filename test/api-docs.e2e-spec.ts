import type { INestApplication } from '@nestjs/common';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import { serveApiDocs } from '../apps/demo/src/api.docs';
import { listen } from './support/http-client';
import { suiteFixture } from './support/suite-fixture';

/** Every route of the admin API, as OpenAPI names it. */
const ADMIN_ROUTES = [
  'post /admin/tokens',
  'get /admin/tokens',
  'get /admin/tokens/{id}',
  'delete /admin/tokens/{id}',
  'post /admin/tokens/{id}/rotate',
  'put /admin/tokens/{id}/rate-limit',
  'delete /admin/tokens/{id}/rate-limit',
  'post /admin/tenants/{tenantId}/invalidate',
];

/** Debian's Chromium (`apt-get install chromium`), or another one named by CHROMIUM_PATH. */
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const HAS_CHROMIUM = existsSync(CHROMIUM);
if (!HAS_CHROMIUM) {
  console.warn(`api-docs: the Swagger UI test in headless Chromium is skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_PATH)`);
}

describe("the demo's OpenAPI document and Swagger UI at /docs", () => {
  const suite = suiteFixture();
  let app: INestApplication;

  beforeAll(async () => {
    app = await suite.app({ beforeInit: serveApiDocs });
  });

  it('/docs-json lists every admin route, with its schemas, behind bearer auth', async () => {
    const res = await request(app.getHttpServer()).get('/docs-json');
    expect(res.status).toBe(200);
    const document = res.body as {
      paths: Record<string, Record<string, { security?: unknown[]; responses: Record<string, unknown>; tags?: string[] }>>;
      components: { schemas: Record<string, unknown>; securitySchemes: Record<string, unknown> };
    };
    const routes = Object.entries(document.paths).flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method} ${path}`));
    expect(routes).toEqual(expect.arrayContaining(ADMIN_ROUTES));
    for (const route of ADMIN_ROUTES) {
      const [method, path] = route.split(' ');
      const operation = document.paths[path][method];
      expect({ route, security: operation.security, tags: operation.tags }).toEqual({ route, security: [{ bearer: [] }], tags: ['api-token admin'] });
      expect(Object.keys(operation.responses)).toEqual(expect.arrayContaining(['400', '401', '403']));
    }
    expect(document.paths['/admin/tokens'].post.responses['201']).toMatchObject({ content: { 'application/json': { schema: { $ref: '#/components/schemas/CreatedTokenSchema' } } } });
    expect(Object.keys(document.components.schemas)).toEqual(
      expect.arrayContaining(['TokenSummarySchema', 'CreatedTokenSchema', 'TokenPageSchema', 'RevocationSchema', 'RotationSchema', 'TenantInvalidationSchema', 'CreateTokenBodySchema', 'InputRefusalSchema']),
    );
    expect(document.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' });
  });

  (HAS_CHROMIUM ? it : it.skip)('Swagger UI loads in headless Chromium and lists every admin route', async () => {
    const { chromium } = await import('playwright-core');
    const port = await listen(app);
    const profile = mkdtempSync(join(tmpdir(), 'api-docs-chromium-'));
    suite.cleanup(() => rmSync(profile, { recursive: true, force: true }));
    // The flags this machine's closed network needs (docs: /work/.library/env/machines/node-svc.md): no background connections.
    const browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    suite.cleanup(() => browser.close());
    const page = await browser.newPage();
    const failed: string[] = [];
    page.on('requestfailed', (req) => failed.push(req.url()));
    const response = await page.goto(`http://127.0.0.1:${port}/docs`);
    expect(response?.status()).toBe(200);
    await page.locator('.opblock').first().waitFor({ timeout: 30_000 });
    const shown = await page.locator('.opblock').evaluateAll((blocks) =>
      blocks.map((block) => {
        const method = block.querySelector('.opblock-summary-method')?.textContent?.trim().toLowerCase();
        const path = block.querySelector('.opblock-summary-path')?.getAttribute('data-path') ?? block.querySelector('.opblock-summary-path')?.textContent?.trim();
        return `${method} ${path?.replace(/\u200b/g, '')}`;
      }),
    );
    expect(shown).toEqual(expect.arrayContaining(ADMIN_ROUTES));
    expect(await page.locator('.btn.authorize').count()).toBe(1);
    expect(failed).toEqual([]);
  });
});
