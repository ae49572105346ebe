export * from "./frameSlabs.js";
export * from "./tunnelLink.js";
