import { provideHttpClient, withInterceptors } from '@angular/common/http';
import { ApplicationConfig, provideBrowserGlobalErrorListeners } from '@angular/core';
import { credentialsInterceptor } from './credentials.interceptor';

export const appConfig: ApplicationConfig = {
  providers: [
    provideBrowserGlobalErrorListeners(),
    // XSRF: Angular's defaults (cookie XSRF-TOKEN, header X-XSRF-TOKEN) are the server's names.
    provideHttpClient(withInterceptors([credentialsInterceptor])),
  ],
};
