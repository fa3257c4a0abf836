import { HttpClient, HttpErrorResponse } from '@angular/common/http';
import { Injectable, inject } from '@angular/core';
import { Observable } from 'rxjs';
import { environment } from '../environments/environment';

export interface User {
  email: string;
  name: string;
}

/** The session server's API, as the reference client calls it. */
@Injectable({ providedIn: 'root' })
export class SessionApi {
  private readonly http = inject(HttpClient);
  private readonly base = environment.apiBase;

  /** The page counter: counts this browser's visits in its session. */
  visit(): Observable<string> {
    return this.http.get(`${this.base}/api`, { responseType: 'text' });
  }

  status(): Observable<{ loggedIn: boolean }> {
    return this.http.get<{ loggedIn: boolean }>(`${this.base}/api/login`);
  }

  login(email: string, password: string): Observable<{ user: User }> {
    return this.http.post<{ user: User }>(`${this.base}/api/login`, { email, password });
  }

  logout(): Observable<object> {
    return this.http.post(`${this.base}/api/logout`, {});
  }

  balance(): Observable<{ balance: number }> {
    return this.http.get<{ balance: number }>(`${this.base}/api/balance`);
  }
}

/** What to tell the user about a failed call: the server's errorMessage when it sent one. */
export function errorMessage(error: unknown): string {
  if (!(error instanceof HttpErrorResponse)) {
    return 'Something went wrong.';
  }
  if (error.status === 0) {
    // A network failure and a CORS refusal look the same to a page.
    return "Cannot reach the server (offline, or this page's origin is not allowed).";
  }
  let body: unknown = error.error;
  if (typeof body === 'string') {
    try {
      body = JSON.parse(body);
    } catch {
      body = null;
    }
  }
  if (body && typeof body === 'object' && 'errorMessage' in body && typeof body.errorMessage === 'string') {
    return body.errorMessage;
  }
  return `Request failed (${error.status}).`;
}
