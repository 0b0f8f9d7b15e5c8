import { D1 } from "meshwork"
/** The auth service's D1 database (credentials and refresh tokens), one SqlClient for the Worker. */

export const AuthDb = D1.layer("AUTH_DB")
