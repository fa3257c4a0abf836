import { HttpInterceptorFn } from '@angular/common/http';
import { environment } from '../environments/environment';

// Cookies go only to the session server's API, never to any other host the app may call.
const apiPrefix = `${environment.apiBase}/api`;

export const credentialsInterceptor: HttpInterceptorFn = (req, next) =>
  next(req.url.startsWith(apiPrefix) ? req.clone({ withCredentials: true }) : req);
