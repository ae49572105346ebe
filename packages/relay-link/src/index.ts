export * from "./frameSlabs.js";
export * from "./tunnelLink.js";
export * from "./hopByHop.js";
