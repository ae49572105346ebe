import { Router } from "express";

const PLACEHOLDER = `<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>RUNIT — renter</title></head>
<body>
<h1>RUNIT renter page</h1>
<p>The renter page is not built yet. The API is at <code>/renter/sessions</code>.</p>
</body>
</html>
`;

/**
 * The renter page's routes, mounted at `/` after the API routes. A placeholder until the renter
 * page lands (it replaces this file and may add static files here).
 */
export function createRenterPageRouter(): Router {
  const router = Router();
  router.get("/renter", (_req, res) => {
    res.type("html").send(PLACEHOLDER);
  });
  return router;
}
