// Production (`ng build`): the app is served from the API's own origin, so it calls relative
// URLs, and the login form starts empty.
import { Environment } from './environment.model';

export const environment: Environment = {
  apiBase: '',
  demoUser: null,
};
