import { ApiTokenHealthIndicator } from 'nestjs-api-token';
import { Controller, Get } from '@nestjs/common';
import { HealthCheck, type HealthCheckResult, HealthCheckService } from '@nestjs/terminus';

/** `GET /health` (no auth): 200 when the token table and Redis answer, else 503 naming what is down. */
@Controller('health')
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly apiToken: ApiTokenHealthIndicator,
  ) {}

  @Get()
  @HealthCheck()
  check(): Promise<HealthCheckResult> {
    return this.health.check([() => this.apiToken.checkDatabase(), () => this.apiToken.checkRedis()]);
  }
}
