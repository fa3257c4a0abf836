// `npm start`: the page on http://localhost:4736 calls the server on http://localhost:3000,
// cross-origin, as the tutorial's client does (the server's dev settings allow this origin).
import { Environment } from './environment.model';

export const environment: Environment = {
  apiBase: 'http://localhost:3000',
  demoUser: { email: 'max@gmail.com', password: '1234' },
};
