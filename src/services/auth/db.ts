/** The auth service's D1 database (credentials and refresh tokens), one SqlClient for the Worker. */
import * as D1 from "../../runtime/D1.ts"

export const AuthDb = D1.layer("AUTH_DB")
