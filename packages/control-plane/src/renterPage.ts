import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import express, { Router } from "express";

/** Where the renter page's built files live, seen from dist/ (built) or src/ (tests from source). */
function findPublicDir(): string | undefined {
  const candidates = [new URL("./public/", import.meta.url), new URL("../dist/public/", import.meta.url)];
  for (const candidate of candidates) {
    const dir = fileURLToPath(candidate);
    if (existsSync(`${dir}renter.html`) && existsSync(`${dir}renter.js`)) return dir;
  }
  return undefined;
}

const NOT_BUILT = "The renter page is not built: run `pnpm run build`.\n";

/**
 * The renter page's routes, mounted at `/` after the API routes: `GET /renter` (the HTML) and
 * `/renter/assets/*` (its script modules and stylesheet, from dist/public). Everything is a file
 * of our own origin, so the page runs under the CSP `script-src 'self'` with nothing inline.
 */
export function createRenterPageRouter(): Router {
  const router = Router();
  const publicDir = findPublicDir();
  // The page changes with each build and must never show a stale script next to new HTML.
  const noCache = (res: express.Response) => res.setHeader("Cache-Control", "no-cache");
  router.get("/renter", (_req, res) => {
    if (!publicDir) {
      res.status(503).type("text/plain").send(NOT_BUILT);
      return;
    }
    noCache(res);
    res.sendFile("renter.html", { root: publicDir, dotfiles: "deny" });
  });
  if (publicDir) {
    router.use(
      "/renter/assets",
      express.static(publicDir, {
        index: false,
        redirect: false,
        dotfiles: "ignore",
        extensions: false,
        setHeaders: (res) => noCache(res),
      }),
    );
  }
  return router;
}
