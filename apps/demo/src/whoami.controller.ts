import { ApiTokenGuard, type AuthenticatedApiToken, CurrentApiToken } from 'nestjs-api-token';
import { Controller, Get, UseGuards } from '@nestjs/common';

@Controller()
export class WhoamiController {
  @Get('app/whoami')
  @UseGuards(ApiTokenGuard('app'))
  app(@CurrentApiToken() token: AuthenticatedApiToken): AuthenticatedApiToken {
    return token;
  }

  @Get('dataset/whoami')
  @UseGuards(ApiTokenGuard('dataset'))
  dataset(@CurrentApiToken() token: AuthenticatedApiToken): AuthenticatedApiToken {
    return token;
  }
}
