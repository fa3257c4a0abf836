// `npm run start:proxy`: relative URLs, forwarded to the server by the dev server (proxy.conf.json),
// so the browser sees one origin and Angular's XSRF defaults apply.
import { Environment } from './environment.model';

export const environment: Environment = {
  apiBase: '',
  demoUser: { email: 'max@gmail.com', password: '1234' },
};
