import { ApiTokenMetrics, registerApiTokenMetrics } from 'nestjs-api-token';
import { Controller, Get, Header } from '@nestjs/common';
import { Registry } from 'prom-client';

/** `GET /metrics` (no auth): the library's metrics in Prometheus text format. */
@Controller('metrics')
export class MetricsController {
  /** A registry of this application's own (prom-client's global one would be shared by every app in the process). */
  private readonly registry = new Registry();

  constructor(metrics: ApiTokenMetrics) {
    registerApiTokenMetrics(metrics, this.registry);
  }

  @Get()
  @Header('Content-Type', Registry.PROMETHEUS_CONTENT_TYPE)
  scrape(): Promise<string> {
    return this.registry.metrics();
  }
}
