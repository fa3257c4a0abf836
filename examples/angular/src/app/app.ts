import { DOCUMENT, DecimalPipe } from '@angular/common';
import { Component, inject, signal } from '@angular/core';
import { NonNullableFormBuilder, ReactiveFormsModule } from '@angular/forms';
import { environment } from '../environments/environment';
import { SessionApi, errorMessage } from './session-api';

@Component({
  selector: 'app-root',
  imports: [ReactiveFormsModule, DecimalPipe],
  template: `
    <main class="card">
      <header>
        <h1>Session demo</h1>
        <p class="muted" aria-live="polite" data-testid="counter">{{ counter() }}</p>
      </header>

      @if (error()) {
        <p class="error" role="alert">{{ error() }}</p>
      }

      @switch (loggedIn()) {
        @case (undefined) {
          <p class="muted" role="status">Loading...</p>
        }
        @case (true) {
          <section>
            <p class="welcome">{{ userName() ? 'Welcome, ' + userName() + '!' : 'Welcome back!' }}</p>
            <button type="button" class="secondary" (click)="logout()">Log out</button>
          </section>
        }
        @case (false) {
          <section>
            <h2>Log in</h2>
            <form [formGroup]="loginForm" (ngSubmit)="login()">
              <label for="email">Email</label>
              <input id="email" type="email" formControlName="email" autocomplete="username" />
              <label for="password">Password</label>
              <input id="password" type="password" formControlName="password" autocomplete="current-password" />
              <button type="submit">Log in</button>
            </form>
          </section>
        }
      }

      <section class="account">
        <h2>Account</h2>
        <button type="button" (click)="showBalance()">Show balance</button>
        @if (balance() !== null) {
          <p data-testid="balance">Balance: {{ balance() | number }}</p>
        }
      </section>

      <footer class="muted">API: {{ apiOrigin }}</footer>
    </main>
  `,
})
export class App {
  private readonly api = inject(SessionApi);

  /** undefined until the server has said whether this browser is logged in. */
  protected readonly loggedIn = signal<boolean | undefined>(undefined);
  /** Known after a login; a reload only learns that the browser is logged in. */
  protected readonly userName = signal<string | null>(null);
  protected readonly balance = signal<number | null>(null);
  protected readonly counter = signal('');
  protected readonly error = signal('');
  protected readonly apiOrigin = environment.apiBase || inject(DOCUMENT).location.origin;

  protected readonly loginForm = inject(NonNullableFormBuilder).group({
    email: environment.demoUser?.email ?? '',
    password: environment.demoUser?.password ?? '',
  });

  constructor() {
    // One after the other: the counter's first visit creates the session, and the status call
    // should not race it for the cookie.
    this.api.status().subscribe({
      next: ({ loggedIn }) => {
        this.loggedIn.set(loggedIn);
        this.loadCounter();
      },
      error: (error: unknown) => {
        this.loggedIn.set(false);
        this.error.set(errorMessage(error));
      },
    });
  }

  protected login(): void {
    const { email, password } = this.loginForm.getRawValue();
    this.error.set('');
    this.api.login(email, password).subscribe({
      next: ({ user }) => {
        this.balance.set(null);
        this.userName.set(user.name);
        this.loggedIn.set(true);
      },
      error: (error: unknown) => this.error.set(errorMessage(error)),
    });
  }

  protected logout(): void {
    this.error.set('');
    this.api.logout().subscribe({
      next: () => {
        this.balance.set(null);
        this.userName.set(null);
        this.loggedIn.set(false);
      },
      error: (error: unknown) => this.error.set(errorMessage(error)),
    });
  }

  protected showBalance(): void {
    this.error.set('');
    this.balance.set(null);
    this.api.balance().subscribe({
      next: ({ balance }) => this.balance.set(balance),
      error: (error: unknown) => this.error.set(errorMessage(error)),
    });
  }

  private loadCounter(): void {
    this.api.visit().subscribe({
      next: (text) => this.counter.set(text),
      error: (error: unknown) => this.error.set(errorMessage(error)),
    });
  }
}
