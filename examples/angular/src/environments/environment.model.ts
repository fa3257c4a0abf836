export interface Environment {
  /** Prepended to every API path: '' for relative URLs on this page's origin. */
  apiBase: string;
  /** Prefills the login form; development builds only. */
  demoUser: { email: string; password: string } | null;
}
